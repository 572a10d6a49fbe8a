//! Scenario `connections` (in progress).
use crate::{Ctx, report::Table};
pub(crate) async fn run(_ctx: &Ctx) -> anyhow::Result<Vec<Table>> {
    anyhow::bail!("todo")
}
