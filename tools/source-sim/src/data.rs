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
pub(crate) struct RenderCtx<'a> {
    pub seed: u64,
    pub format: TimestampFormat,
    pub granularity: Granularity,
    pub envelope: Envelope,
    pub fields: &'a FieldSet,
    pub base_url: &'a str,
    /// Initial number of people, so donations point at plausible people.
    pub people_hint: usize,
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
/// in the bare envelope), broken as `bad` says.
pub(crate) fn write_record(
    out: &mut String,
    ctx: &RenderCtx<'_>,
    entity: Entity,
    id: u64,
    rec: &Rec,
    bad: Option<Corruption>,
) {
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
            write_attributes(&mut w, ctx, entity, id, rec, bad);
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
        }
        Envelope::Bare => {
            out.push_str("{\"id\":\"");
            write_id(out, id, bad);
            out.push('"');
            let mut w = ObjWriter::new(out, ctx.fields, false);
            write_attributes(&mut w, ctx, entity, id, rec, bad);
            if let Some(pid) = person
                && w.key("person_id")
            {
                let _ = write!(w.out, "\"{pid}\"");
            }
            out.push('}');
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
) {
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
        Entity::People => person(w, id, rec, stable, var, lone),
        Entity::Donations => donation(w, ctx, rec, stable, var, lone),
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

fn person(w: &mut ObjWriter<'_>, id: u64, rec: &Rec, mut s: Gen, mut v: Gen, lone: bool) {
    let first = s.pick(FIRST);
    let last = s.pick(LAST);
    let middle = s.chance(3).then(|| s.pick(FIRST));
    let nickname = v.chance(4).then(|| v.pick(FIRST));
    let gender = s.pick(&["M", "F", ""]);
    let birth_year = 1940 + s.below(80) as i64;
    let birthdate = format!(
        "{birth_year:04}-{:02}-{:02}",
        1 + s.below(12),
        1 + s.below(28)
    );
    let anniversary = s.chance(3).then(|| {
        format!(
            "{:04}-{:02}-{:02}",
            1965 + s.below(58),
            1 + s.below(12),
            1 + s.below(28)
        )
    });
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
    w.opt_str("medical_notes", v.chance(5).then(|| v.pick(MEDICAL)));
    w.opt_str("remote_id", None);
    w.opt_str("inactivated_at", None);

    let lf = first.to_ascii_lowercase();
    let ll = last.to_ascii_lowercase();
    if w.key("emails") {
        let _ = write!(
            w.out,
            "[{{\"address\":\"{lf}.{ll}{id}@example.org\",\"location\":\"Home\",\"primary\":true}}"
        );
        if v.chance(2) {
            let _ = write!(
                w.out,
                ",{{\"address\":\"{lf}{id}@work.example.com\",\"location\":\"Work\",\"primary\":false}}"
            );
        }
        w.out.push(']');
    }
    if w.key("phone_numbers") {
        let _ = write!(
            w.out,
            "[{{\"number\":\"+1 555-{:03}-{:04}\",\"location\":\"Mobile\",\"primary\":true}}]",
            s.below(1000),
            s.below(10_000)
        );
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
        let target = 40 + v.below(60) as usize;
        let mut notes = format!("Revision {}.", rec.mutation);
        while notes.len() < target {
            notes.push(' ');
            notes.push_str(v.pick(WORDS));
        }
        push_str(w.out, &notes);
    }
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
