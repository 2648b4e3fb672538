//! Deterministic record content: attributes are generated on the fly from
//! `(seed, entity, id, mutation counter)`, so the store keeps only a few bytes per record.

use std::fmt::Write as _;

use crate::config::{Corruption, Entity, Envelope, Granularity, TimestampFormat};
use crate::json::{FieldSet, ObjWriter, push_str};
use crate::store::Rec;
use crate::timefmt::{write_rfc3339_local, write_timestamp_json};

/// SplitMix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic generator (SplitMix64 stream).
struct Gen(u64);

impl Gen {
    fn new(seed: u64, entity: Entity, id: u64, salt: u64) -> Gen {
        let tag = match entity {
            Entity::People => 0x5045_4f50_4c45,
            Entity::Donations => 0x444f_4e41_5445,
        };
        Gen(mix(seed ^ mix(tag ^ mix(id ^ mix(salt)))))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Keiko", "Liam", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara", "Umar",
    "Vera", "Wen", "Ximena", "Yusuf", "Zoe",
];
const LAST: &[&str] = &[
    "Anders", "Baptiste", "Chen", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
    "Jensen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero", "Rossi",
    "Schmidt", "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yamada", "Zeller",
];
const STREETS: &[&str] = &[
    "Maple", "Oak", "Cedar", "Elm", "Pine", "Birch", "Walnut", "Chestnut", "Willow", "Aspen",
];
const STREET_KINDS: &[&str] = &["St", "Ave", "Rd", "Ln", "Blvd", "Ct"];
const CITIES: &[(&str, &str, &str)] = &[
    ("Portland", "OR", "97201"),
    ("Austin", "TX", "73301"),
    ("Denver", "CO", "80202"),
    ("Nashville", "TN", "37201"),
    ("Columbus", "OH", "43004"),
    ("Raleigh", "NC", "27601"),
    ("Boise", "ID", "83702"),
    ("Madison", "WI", "53703"),
];
const MEMBERSHIP: &[&str] = &[
    "Member",
    "Regular Attender",
    "Visitor",
    "Participant",
    "Staff",
];
const MEDICAL: &[&str] = &[
    "Allergic to peanuts",
    "Asthma",
    "Diabetic",
    "Lactose intolerant",
];
const WORDS: &[&str] = &[
    "volunteer",
    "small",
    "group",
    "prayer",
    "team",
    "welcome",
    "coffee",
    "setup",
    "music",
    "children",
    "youth",
    "follow",
    "up",
    "visited",
    "called",
    "moved",
    "newsletter",
    "kitchen",
    "parking",
    "greeter",
    "camp",
    "retreat",
    "donated",
    "meal",
    "train",
    "schedule",
    "sunday",
    "evening",
    "family",
    "contact",
    "prefers",
    "email",
    "text",
    "mentor",
    "library",
    "garden",
];
const MEMOS: &[&str] = &[
    "Building fund",
    "Missions",
    "General",
    "Youth camp",
    "Benevolence",
];

/// What rendering a record depends on besides the record itself.
#[derive(Clone, Copy)]
pub(crate) struct RenderCtx<'a> {
    pub seed: u64,
    pub format: TimestampFormat,
    pub granularity: Granularity,
    pub envelope: Envelope,
    pub fields: &'a FieldSet,
    pub base_url: &'a str,
    /// Initial number of people, so donations point at plausible people.
    pub people_hint: usize,
    /// [`crate::SimConfig::record_bytes`]: the size of a full person's JSON, when set.
    pub record_bytes: Option<usize>,
}

impl RenderCtx<'_> {
    fn ts(&self, w: &mut ObjWriter<'_>, name: &str, us: i64) {
        if w.key(name) {
            write_timestamp_json(w.out, us, self.format, self.granularity);
        }
    }
}

/// Writes `id` as served: the real ID, or the broken one a [`Corruption`] asks for.
fn write_id(out: &mut String, id: u64, bad: Option<Corruption>) {
    match bad {
        Some(Corruption::EmptyId) => {}
        Some(Corruption::LongId(n)) => out.extend(std::iter::repeat_n('9', n)),
        _ => {
            let _ = write!(out, "{id}");
        }
    }
}

/// Writes one resource object (`{"type":..,"id":..,"attributes":{..},...}`, or the flat object
/// in the bare envelope), broken as `bad` says, and sized as [`RenderCtx::record_bytes`] asks.
pub(crate) fn write_record(
    out: &mut String,
    ctx: &RenderCtx<'_>,
    entity: Entity,
    id: u64,
    rec: &Rec,
    bad: Option<Corruption>,
) {
    match ctx.record_bytes {
        Some(n) if entity == Entity::People && Extra::SIZED.iter().any(|a| ctx.fields.wants(a)) => {
            write_sized_person(out, ctx, id, rec, bad, n);
        }
        _ => {
            write_resource(out, ctx, entity, id, rec, bad, Notes::Natural);
        }
    }
}

/// Writes a person whose full JSON (every attribute, in the run's envelope, as served) is `n`
/// bytes long: rendered with the shortest notes, dropping its [`Extra`]s one by one while that
/// is longer than `n`, then the notes filled up to `n` in place. A record still too long with
/// every extra dropped keeps the shortest notes and its length. A sparse field set is written
/// with the full record's extras left out and notes as long as the full record's.
fn write_sized_person(
    out: &mut String,
    ctx: &RenderCtx<'_>,
    id: u64,
    rec: &Rec,
    bad: Option<Corruption>,
    n: usize,
) {
    let all = FieldSet::All;
    let full = RenderCtx {
        fields: &all,
        ..*ctx
    };
    let sparse = *ctx.fields != FieldSet::All;
    let start = out.len();
    let mut scratch = String::new();
    let mut drop = 0;
    let (slot, len) = loop {
        let (buf, from) = if sparse {
            (&mut scratch, 0)
        } else {
            (&mut *out, start)
        };
        buf.truncate(from);
        let notes = Notes::Sized { drop };
        let slot = write_resource(buf, &full, Entity::People, id, rec, bad, notes);
        let len = buf.len() - from;
        if len <= n || drop == Extra::ALL.len() {
            break (slot, len);
        }
        drop += 1;
    };
    let slot = if sparse {
        let notes = Notes::Sized { drop };
        write_resource(out, ctx, Entity::People, id, rec, bad, notes)
    } else {
        slot
    };
    if let Some(mut slot) = slot {
        let fill = filler(&mut slot.words, n.saturating_sub(len));
        out.insert_str(slot.at, &fill);
    }
}

/// How a person's `notes` are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notes {
    /// As generated: `Revision N.` and words up to a drawn length of 40 to 99 bytes.
    Natural,
    /// For [`RenderCtx::record_bytes`]: `Revision N.` only, the words inserted afterwards at
    /// the returned [`NotesSlot`]; the first `drop` of [`Extra::ALL`] are left out.
    Sized { drop: usize },
}

/// Where sized notes end in the output (before the closing quote), and the generator their
/// words are drawn from.
struct NotesSlot {
    at: usize,
    words: Gen,
}

/// The optional parts of a person that a sized record leaves out, in this order, when even its
/// shortest notes would make it longer than asked: the work e-mail first (the largest), the
/// phone number last (people rarely lack one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    /// The second (work) e-mail address: about 75 bytes.
    WorkEmail,
    /// `medical_notes` (`null` instead).
    MedicalNotes,
    /// `anniversary` (`null` instead).
    Anniversary,
    /// `nickname` (`null` instead, and `name` from the first name).
    Nickname,
    /// `middle_name` (`null` instead).
    MiddleName,
    /// The phone number (`phone_numbers: []`): about 60 bytes, the last resort.
    PhoneNumber,
}

impl Extra {
    /// The attributes that sizing changes: `notes` and those an extra is in.
    const SIZED: [&'static str; 8] = [
        "notes",
        "emails",
        "medical_notes",
        "anniversary",
        "nickname",
        "name",
        "middle_name",
        "phone_numbers",
    ];

    const ALL: [Extra; 6] = [
        Extra::WorkEmail,
        Extra::MedicalNotes,
        Extra::Anniversary,
        Extra::Nickname,
        Extra::MiddleName,
        Extra::PhoneNumber,
    ];

    /// Whether this extra is written when the first `drop` of [`Extra::ALL`] are left out.
    fn kept(self, notes: Notes) -> bool {
        match notes {
            Notes::Natural => true,
            Notes::Sized { drop } => (self as usize) >= drop,
        }
    }
}

/// `len` bytes to append to sized notes: ` word word ...` drawn from [`WORDS`], the last word
/// cut short to land exactly, or a lone `.` when one byte is left. ASCII with nothing to
/// escape, so the JSON grows by exactly `len` bytes.
fn filler(words: &mut Gen, len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let room = len - s.len();
        if room == 1 {
            s.push('.');
            break;
        }
        let word = words.pick(WORDS);
        s.push(' ');
        s.push_str(&word[..word.len().min(room - 1)]);
    }
    s
}

/// [`write_record`] with the notes written as `notes` says; returns where sized notes end.
fn write_resource(
    out: &mut String,
    ctx: &RenderCtx<'_>,
    entity: Entity,
    id: u64,
    rec: &Rec,
    bad: Option<Corruption>,
    notes: Notes,
) -> Option<NotesSlot> {
    let person = match entity {
        Entity::Donations => Some(donation_person(ctx, id)),
        Entity::People => None,
    };
    match ctx.envelope {
        Envelope::JsonApi => {
            out.push_str("{\"type\":\"");
            out.push_str(entity.json_type());
            out.push_str("\",\"id\":\"");
            write_id(out, id, bad);
            out.push_str("\",\"attributes\":{");
            let mut w = ObjWriter::new(out, ctx.fields, true);
            let slot = write_attributes(&mut w, ctx, entity, id, rec, bad, notes);
            out.push('}');
            if let Some(pid) = person
                && ctx.fields.wants("person")
            {
                let _ = write!(
                    out,
                    ",\"relationships\":{{\"person\":{{\"data\":{{\"type\":\"Person\",\"id\":\"{pid}\"}}}}}}"
                );
            }
            let _ = write!(
                out,
                ",\"links\":{{\"self\":\"{}{}/{id}\"}}}}",
                ctx.base_url,
                entity.path()
            );
            slot
        }
        Envelope::Bare => {
            out.push_str("{\"id\":\"");
            write_id(out, id, bad);
            out.push('"');
            let mut w = ObjWriter::new(out, ctx.fields, false);
            let slot = write_attributes(&mut w, ctx, entity, id, rec, bad, notes);
            if let Some(pid) = person
                && w.key("person_id")
            {
                let _ = write!(w.out, "\"{pid}\"");
            }
            out.push('}');
            slot
        }
    }
}

fn donation_person(ctx: &RenderCtx<'_>, id: u64) -> u64 {
    let mut s = Gen::new(ctx.seed, Entity::Donations, id, u64::MAX);
    1 + s.below(ctx.people_hint.max(1) as u64)
}

fn write_attributes(
    w: &mut ObjWriter<'_>,
    ctx: &RenderCtx<'_>,
    entity: Entity,
    id: u64,
    rec: &Rec,
    bad: Option<Corruption>,
    notes: Notes,
) -> Option<NotesSlot> {
    ctx.ts(w, "created_at", rec.created_us);
    match bad {
        Some(Corruption::NullDelta) => w.opt_str("updated_at", None),
        Some(Corruption::MissingDelta) => {}
        Some(Corruption::BadDelta) => w.str("updated_at", "not a date"),
        Some(Corruption::NaiveTimestamp) => {
            if w.key("updated_at") {
                w.out.push('"');
                write_rfc3339_local(w.out, rec.updated_us, ctx.granularity);
                w.out.push('"');
            }
        }
        _ => ctx.ts(w, "updated_at", rec.updated_us),
    }
    let stable = Gen::new(ctx.seed, entity, id, 0);
    let var = Gen::new(ctx.seed, entity, id, u64::from(rec.mutation) + 1);
    let lone = bad == Some(Corruption::LoneSurrogate);
    match entity {
        Entity::People => person(w, id, rec, stable, var, lone, notes),
        Entity::Donations => {
            donation(w, ctx, rec, stable, var, lone);
            None
        }
    }
}

/// Writes a string attribute; with `lone`, its value ends in the escape `\ud800` (a high
/// surrogate with no low one after it).
fn str_maybe_lone(w: &mut ObjWriter<'_>, name: &str, v: &str, lone: bool) {
    if !lone {
        w.str(name, v);
    } else if w.key(name) {
        push_str(w.out, v);
        w.out.pop();
        w.out.push_str("\\ud800\"");
    }
}

/// Writes a person's attributes; with sized notes, returns where they end (see [`Notes`]). The
/// generators are drawn the same whatever is left out, so that the rest stays the same.
fn person(
    w: &mut ObjWriter<'_>,
    id: u64,
    rec: &Rec,
    mut s: Gen,
    mut v: Gen,
    lone: bool,
    notes_as: Notes,
) -> Option<NotesSlot> {
    let kept = |e: Extra| e.kept(notes_as);
    let first = s.pick(FIRST);
    let last = s.pick(LAST);
    let middle = s
        .chance(3)
        .then(|| s.pick(FIRST))
        .filter(|_| kept(Extra::MiddleName));
    let nickname = v
        .chance(4)
        .then(|| v.pick(FIRST))
        .filter(|_| kept(Extra::Nickname));
    let gender = s.pick(&["M", "F", ""]);
    let birth_year = 1940 + s.below(80) as i64;
    let birthdate = format!(
        "{birth_year:04}-{:02}-{:02}",
        1 + s.below(12),
        1 + s.below(28)
    );
    let anniversary = s
        .chance(3)
        .then(|| {
            format!(
                "{:04}-{:02}-{:02}",
                1965 + s.below(58),
                1 + s.below(12),
                1 + s.below(28)
            )
        })
        .filter(|_| kept(Extra::Anniversary));
    let child = birth_year > 2008;

    str_maybe_lone(w, "first_name", first, lone);
    w.opt_str("middle_name", middle);
    w.str("last_name", last);
    w.opt_str("nickname", nickname);
    if w.key("name") {
        let name = format!("{} {last}", nickname.unwrap_or(first));
        push_str(w.out, &name);
    }
    w.opt_str("given_name", None);
    w.opt_str("gender", (!gender.is_empty()).then_some(gender));
    w.str("birthdate", &birthdate);
    w.opt_str("anniversary", anniversary.as_deref());
    w.bool("child", child);
    w.opt_int("grade", None);
    w.opt_int("graduation_year", child.then_some(birth_year + 18));
    w.str("status", if v.chance(10) { "inactive" } else { "active" });
    w.str("membership", s.pick(MEMBERSHIP));
    if w.key("avatar") {
        let _ = write!(w.out, "\"https://avatars.example.org/people/{id}.png\"");
    }
    w.bool("site_administrator", false);
    w.bool("accounting_administrator", s.chance(50));
    w.bool("passed_background_check", s.chance(2));
    let medical = v.chance(5).then(|| v.pick(MEDICAL));
    w.opt_str(
        "medical_notes",
        medical.filter(|_| kept(Extra::MedicalNotes)),
    );
    w.opt_str("remote_id", None);
    w.opt_str("inactivated_at", None);

    let lf = first.to_ascii_lowercase();
    let ll = last.to_ascii_lowercase();
    if w.key("emails") {
        let _ = write!(
            w.out,
            "[{{\"address\":\"{lf}.{ll}{id}@example.org\",\"location\":\"Home\",\"primary\":true}}"
        );
        if v.chance(2) && kept(Extra::WorkEmail) {
            let _ = write!(
                w.out,
                ",{{\"address\":\"{lf}{id}@work.example.com\",\"location\":\"Work\",\"primary\":false}}"
            );
        }
        w.out.push(']');
    }
    if w.key("phone_numbers") {
        let (exchange, line) = (s.below(1000), s.below(10_000));
        if kept(Extra::PhoneNumber) {
            let _ = write!(
                w.out,
                "[{{\"number\":\"+1 555-{exchange:03}-{line:04}\",\"location\":\"Mobile\",\"primary\":true}}]",
            );
        } else {
            w.out.push_str("[]");
        }
    }
    if w.key("addresses") {
        let (city, state, zip) = CITIES[s.below(CITIES.len() as u64) as usize];
        let _ = write!(
            w.out,
            "[{{\"street_line_1\":\"{} {} {}\",\"street_line_2\":null,\"city\":\"{city}\",\"state\":\"{state}\",\"zip\":\"{zip}\",\"location\":\"Home\",\"primary\":true}}]",
            1 + s.below(9_999),
            s.pick(STREETS),
            s.pick(STREET_KINDS)
        );
    }
    if w.key("notes") {
        let mut notes = format!("Revision {}.", rec.mutation);
        if notes_as != Notes::Natural {
            push_str(w.out, &notes);
            return Some(NotesSlot {
                at: w.out.len() - 1,
                words: v,
            });
        }
        let target = 40 + v.below(60) as usize;
        while notes.len() < target {
            notes.push(' ');
            notes.push_str(v.pick(WORDS));
        }
        push_str(w.out, &notes);
    }
    None
}

fn donation(
    w: &mut ObjWriter<'_>,
    ctx: &RenderCtx<'_>,
    rec: &Rec,
    mut s: Gen,
    mut v: Gen,
    lone: bool,
) {
    let amount = 500 + s.below(49_500) as i64;
    let method = s.pick(&["card", "ach", "cash", "check"]);
    let card = method == "card";
    let refunded = rec.mutation > 0 && v.chance(3);
    w.int("amount_cents", amount);
    str_maybe_lone(w, "amount_currency", "USD", lone);
    w.int(
        "fee_cents",
        if card || method == "ach" {
            amount * 29 / 1000 + 30
        } else {
            0
        },
    );
    w.str("payment_method", method);
    w.opt_str(
        "payment_method_sub",
        card.then(|| s.pick(&["credit", "debit"])),
    );
    w.opt_str(
        "payment_brand",
        card.then(|| s.pick(&["visa", "mastercard", "amex", "discover"])),
    );
    if w.key("payment_last4") {
        if card || method == "ach" {
            let _ = write!(w.out, "\"{:04}\"", s.below(10_000));
        } else {
            w.out.push_str("null");
        }
    }
    w.opt_int(
        "payment_check_number",
        (method == "check").then(|| 1000 + s.below(9000) as i64),
    );
    let status = if refunded {
        "succeeded"
    } else {
        match v.below(20) {
            0 => "pending",
            1 => "failed",
            _ => "succeeded",
        }
    };
    w.str("payment_status", status);
    ctx.ts(w, "received_at", rec.created_us);
    w.bool("refunded", refunded);
    w.bool("refundable", !refunded && (card || method == "ach"));
    w.opt_str("memo", v.chance(4).then(|| v.pick(MEMOS)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(fields: &'a FieldSet, envelope: Envelope) -> RenderCtx<'a> {
        RenderCtx {
            seed: 7,
            format: TimestampFormat::Rfc3339,
            granularity: Granularity::Micros,
            envelope,
            fields,
            base_url: "http://sim",
            people_hint: 10,
            record_bytes: None,
        }
    }

    fn rec(mutation: u32) -> Rec {
        Rec {
            updated_us: 1_704_067_200_000_000,
            created_us: 1_704_067_200_000_000,
            mutation,
            alive: true,
        }
    }

    fn render(entity: Entity, id: u64, r: &Rec, fields: &FieldSet, env: Envelope) -> String {
        let mut out = String::new();
        write_record(&mut out, &ctx(fields, env), entity, id, r, None);
        out
    }

    #[test]
    fn people_are_valid_json_of_about_a_kilobyte() {
        let all = FieldSet::All;
        let mut total = 0;
        for id in 1..=200 {
            let s = render(Entity::People, id, &rec(0), &all, Envelope::JsonApi);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["id"], id.to_string());
            assert_eq!(v["type"], "Person");
            total += s.len();
        }
        let avg = total / 200;
        assert!((900..=1200).contains(&avg), "average person size {avg}");
    }

    #[test]
    fn donations_are_valid_json_and_point_at_a_person() {
        let all = FieldSet::All;
        for id in 1..=50 {
            let s = render(
                Entity::Donations,
                id,
                &rec(id as u32 % 3),
                &all,
                Envelope::JsonApi,
            );
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            let pid: u64 = v["relationships"]["person"]["data"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=10).contains(&pid));
            assert!(v["attributes"]["amount_cents"].as_i64().unwrap() >= 500);
        }
    }

    #[test]
    fn content_depends_on_mutation_counter_and_is_deterministic() {
        let all = FieldSet::All;
        let a = render(Entity::People, 5, &rec(0), &all, Envelope::JsonApi);
        let b = render(Entity::People, 5, &rec(0), &all, Envelope::JsonApi);
        let c = render(Entity::People, 5, &rec(1), &all, Envelope::JsonApi);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let va: serde_json::Value = serde_json::from_str(&a).unwrap();
        let vc: serde_json::Value = serde_json::from_str(&c).unwrap();
        // Stable identity, changed notes.
        assert_eq!(va["attributes"]["last_name"], vc["attributes"]["last_name"]);
        assert_ne!(va["attributes"]["notes"], vc["attributes"]["notes"]);
    }

    /// The natural content, byte for byte as before `record_bytes` existed: an FNV-1a hash of
    /// 200 people in both envelopes, at mutations 0 and 3, computed before the change.
    #[test]
    fn unsized_people_are_unchanged() {
        let all = FieldSet::All;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for env in [Envelope::JsonApi, Envelope::Bare] {
            for m in [0, 3] {
                for id in 1..=200 {
                    for b in render(Entity::People, id, &rec(m), &all, env).bytes() {
                        h ^= u64::from(b);
                        h = h.wrapping_mul(0x0100_0000_01b3);
                    }
                }
            }
        }
        assert_eq!(h, 0x5df7_c13a_684a_c21f);
    }

    #[test]
    fn filler_lands_exactly() {
        let mut g = Gen::new(1, Entity::People, 1, 1);
        for len in 0..200 {
            let f = filler(&mut g, len);
            assert_eq!(f.len(), len);
            assert!(
                f.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b' ' || b == b'.')
            );
            assert!(len < 2 || f.starts_with(' '), "{f:?}");
        }
    }

    #[test]
    fn bare_records_are_flat() {
        let all = FieldSet::All;
        let s = render(Entity::Donations, 3, &rec(0), &all, Envelope::Bare);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "3");
        assert!(v["updated_at"].is_string());
        assert!(v["person_id"].is_string());
        assert!(v.get("attributes").is_none());
    }

    #[test]
    fn sparse_fields_keep_only_listed_attributes() {
        let only = FieldSet::Only(vec!["updated_at".into()]);
        let s = render(Entity::Donations, 3, &rec(0), &only, Envelope::JsonApi);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let keys: Vec<&String> = v["attributes"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["updated_at"]);
        assert!(v.get("relationships").is_none());
    }
}
