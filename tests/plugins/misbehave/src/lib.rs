//! A service that misbehaves on purpose, for the host's isolation tests.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wasmbento_sdk::{Apis, Error, Service};

#[derive(Deserialize, JsonSchema)]
struct Empty {}

#[derive(Deserialize, JsonSchema)]
struct Alloc {
    /// How many MiB to allocate and touch.
    mib: usize,
}

#[derive(Serialize, JsonSchema)]
struct Count {
    calls: u64,
}

#[derive(Serialize, JsonSchema)]
struct Done {
    ok: bool,
}

static mut CALLS: u64 = 0;

struct Misbehave;

impl Service for Misbehave {
    fn apis(apis: &mut Apis) {
        apis.api(
            "count",
            "Counts calls in a global: a fresh instance always says 1.",
            |_: Empty| {
                // Single-threaded guest; the static is only touched here.
                let calls = unsafe {
                    CALLS += 1;
                    CALLS
                };
                Ok(Count { calls })
            },
        )
        .api(
            "trap",
            "Panics, which traps the instance.",
            |_: Empty| -> Result<Done, Error> { panic!("deliberate trap") },
        )
        .api(
            "spin",
            "Loops forever.",
            |_: Empty| -> Result<Done, Error> {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            },
        )
        .api(
            "alloc",
            "Allocates and touches `mib` MiB.",
            |input: Alloc| {
                let mut blocks = Vec::new();
                for _ in 0..input.mib {
                    let block = vec![1u8; 1 << 20];
                    blocks.push(std::hint::black_box(block));
                }
                Ok(Done {
                    ok: blocks.len() == input.mib,
                })
            },
        )
        .api(
            "fail",
            "Returns an internal error.",
            |_: Empty| -> Result<Done, Error> { Err(Error::internal("deliberate failure")) },
        );
    }
}

wasmbento_sdk::export_service!(Misbehave);
