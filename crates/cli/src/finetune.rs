//! `automodel-cli finetune [--config RECIPE] [--set key.path=value]... [--output-dir DIR]
//! [--resume] [--device cpu|cuda[:N]|wgpu[:N|:cpu]] [--check]`: full fine-tuning or LoRA of
//! Gemma 3 / Gemma 3n from a YAML recipe (Automodel's section names), carried out by
//! [`automodel::train::run_on`]. Without `--config` it runs `recipes/default.yaml`.

use std::path::{Path, PathBuf};

use automodel::core::device::DeviceSpec;
use automodel::train::{Recipe, RunOptions};

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The recipe (YAML). Default: `recipes/default.yaml` (LoRA on Gemma 3 270M, built-in
    /// instruction task, CPU, a few minutes).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a recipe key, e.g. `--set step_scheduler.max_steps=6 --set peft.dim=16`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,
    /// The run folder (checkpoints, logs). Default: `checkpoint.checkpoint_dir`, else
    /// `runs/<recipe>-<date>-<time>`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue the run in the run folder (default: the newest `runs/<recipe>-*`) from its
    /// latest complete checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Where to train: `cpu`, `cuda[:N]` or `wgpu[:N|:cpu]` (builds with `--features cuda` / `wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Read and check the recipe, print what the run would do, and exit (a model or dataset
    /// that is not there yet is only noted).
    #[arg(long)]
    pub check: bool,
}

/// The recipe `--config` names (or the default one), with the `--set` overrides applied.
pub fn recipe(config: Option<&Path>, set: &[String]) -> anyhow::Result<Recipe> {
    let default = Path::new("recipes/default.yaml");
    Ok(match config {
        Some(p) => Recipe::from_file(p, set)?,
        None if default.is_file() => Recipe::from_file(default, set)?,
        None => Recipe::default_recipe(default, set)?,
    })
}

pub fn finetune(a: FinetuneArgs) -> anyhow::Result<()> {
    let recipe = recipe(a.config.as_deref(), &a.set)?;
    recipe.validate()?;
    if a.check {
        let model = recipe.model_path().unwrap_or_else(|e| {
            eprintln!("note: {e}");
            PathBuf::new()
        });
        let options = RunOptions::for_recipe(&recipe, a.output_dir, a.resume)?;
        print!("{}", recipe.describe(&model, &options.run_dir));
        return Ok(());
    }
    let options = RunOptions::for_recipe(&recipe, a.output_dir, a.resume)?;
    eprintln!("run directory {}", options.run_dir.display());
    // Ctrl-C / SIGTERM: finish the step, save, exit 130; a second one quits at once
    automodel::train::interrupt::install();
    let summary = automodel::train::run_on(&recipe, &options, a.device)?;
    print!("{summary}");
    Ok(())
}
