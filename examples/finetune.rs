//! Fine-tune from Rust: the default recipe (LoRA on Gemma 3 270M, the built-in instruction task),
//! with any `key.path=value` overrides from the command line. Prints where the adapter is.
//!
//!     cargo run --release -p automodel --example finetune -- step_scheduler.max_steps=20

use automodel::{DeviceSpec, Recipe, RunOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let overrides: Vec<String> = std::env::args().skip(1).collect();
    let recipe = Recipe::from_file("recipes/default.yaml", &overrides)?;
    let options = RunOptions::for_recipe(&recipe, None, false)?;
    let summary = automodel::finetune(&recipe, &options, DeviceSpec::Cpu)?;
    if let (Some(first), Some(last)) = (summary.first_loss, summary.last_loss) {
        println!("loss {first:.4} -> {last:.4} over {} steps", summary.steps);
    }
    let checkpoint = summary
        .last_checkpoint
        .ok_or("the run saved no checkpoint")?;
    println!("adapter {}", checkpoint.join("model").display());
    Ok(())
}
