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

#[derive(Deserialize, Serialize, JsonSchema)]
struct Sleep {
    /// How long to sleep, in milliseconds.
    ms: u64,
    /// Returned as it came.
    tag: String,
}

#[derive(Deserialize, JsonSchema)]
struct Gauge {
    name: String,
    value: f64,
}

#[derive(Serialize, JsonSchema)]
struct Count {
    calls: u64,
}

#[derive(Serialize, JsonSchema)]
struct Sandbox {
    /// Environment variables the guest sees.
    env_vars: usize,
    /// Whether it could list the root directory.
    read_root: bool,
    /// Whether it could open a host file.
    read_file: bool,
    /// Whether it could create a file.
    write_file: bool,
}

#[derive(Serialize, JsonSchema)]
struct Done {
    ok: bool,
}

static mut CALLS: u64 = 0;

struct Misbehave;

impl Service for Misbehave {
    fn apis(apis: &mut Apis) {
        apis.api("count", "Counts calls in a global: a fresh instance always says 1.", |_: Empty| {
            // Single-threaded guest; the static is only touched here.
            let calls = unsafe {
                CALLS += 1;
                CALLS
            };
            Ok(Count { calls })
        })
        .api("trap", "Panics, which traps the instance.", |_: Empty| -> Result<Done, Error> {
            panic!("deliberate trap")
        })
        .api("spin", "Loops forever.", |_: Empty| -> Result<Done, Error> {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        })
        .api("alloc", "Allocates and touches `mib` MiB.", |input: Alloc| {
            let mut blocks = Vec::new();
            for _ in 0..input.mib {
                let block = vec![1u8; 1 << 20];
                blocks.push(std::hint::black_box(block));
            }
            Ok(Done { ok: blocks.len() == input.mib })
        })
        .api("sandbox", "Reports what of the host the guest can reach.", |_: Empty| {
            Ok(Sandbox {
                env_vars: std::env::vars_os().count(),
                read_root: std::fs::read_dir("/").is_ok(),
                read_file: std::fs::read("/etc/hostname").is_ok(),
                write_file: std::fs::write("escape.txt", b"x").is_ok(),
            })
        })
        .api("sleep", "Sleeps, then returns its tag.", |input: Sleep| {
            std::thread::sleep(std::time::Duration::from_millis(input.ms));
            Ok(input)
        })
        .api("gauge", "Reports a custom gauge for autoscaling.", |input: Gauge| {
            wasmbento_sdk::metrics::gauge(&input.name, input.value);
            Ok(Done { ok: true })
        })
        .api("fail", "Returns an internal error.", |_: Empty| -> Result<Done, Error> {
            Err(Error::internal("deliberate failure"))
        });
    }
}

wasmbento_sdk::export_service!(Misbehave);
