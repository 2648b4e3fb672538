//! Pure logic: no IO, no SDK types. Unit-tested table by table.

pub mod budget;
pub mod cursor;
pub mod deadline;
pub mod json;
pub mod size;
pub mod timefmt;
pub mod token;
pub mod version;

pub use version::{decide_delete, decide_regression, decide_upsert};
