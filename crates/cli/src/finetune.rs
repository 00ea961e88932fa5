//! `automodel-cli finetune [--config RECIPE] [--set key.path=value]... [--output-dir DIR]
//! [--resume] [--device cpu|cuda[:N]|wgpu[:N|:cpu]] [--check]`: full fine-tuning or LoRA of
//! Gemma 3 / Gemma 3n from a YAML recipe (Automodel's section names), carried out by
//! [`automodel::train::run_on`]. Without `--config` it runs `recipes/default.yaml`.

use std::path::{Path, PathBuf};

use automodel::core::device::DeviceSpec;
use automodel::train::{Recipe, RunOptions, Summary};

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
        print_plan(&recipe, &model, &options);
        return Ok(());
    }
    let options = RunOptions::for_recipe(&recipe, a.output_dir, a.resume)?;
    eprintln!("run directory {}", options.run_dir.display());
    // Ctrl-C / SIGTERM: finish the step, save, exit 130; a second one quits at once
    automodel::train::interrupt::install();
    let summary = automodel::train::run_on(&recipe, &options, a.device)?;
    print_summary(&summary);
    Ok(())
}

/// What `--check` prints: the resolved run.
fn print_plan(r: &Recipe, model: &Path, o: &RunOptions) {
    let s = r.settings();
    let ss = &s.step_scheduler;
    println!("recipe          {} (checked)", r.path.display());
    println!("model           {}", model.display());
    println!(
        "training        {}",
        match &r.peft {
            Some(l) => format!("LoRA r {} alpha {} (scale {})", l.r, l.alpha, l.scale()),
            None => "full fine-tuning".to_string(),
        }
    );
    println!(
        "steps           {} of {} rows ({} per micro-batch, {} accumulated)",
        ss.max_steps.map_or_else(
            || format!("{} epoch(s)", ss.num_epochs.unwrap_or(1)),
            |n| n.to_string()
        ),
        ss.global_batch_size,
        ss.local_batch_size,
        ss.global_batch_size / ss.local_batch_size.max(1)
    );
    println!(
        "optimizer       AdamW lr {:e} betas {:?} eps {:e} weight_decay {}; schedule {:?}, warm-up {}",
        s.optimizer.lr,
        s.optimizer.betas,
        s.optimizer.eps,
        s.optimizer.weight_decay,
        s.lr_scheduler.lr_decay_style,
        s.lr_scheduler.lr_warmup_steps
    );
    println!(
        "clip_grad_norm  {}",
        s.max_grad_norm.map_or("off".into(), |m| m.to_string())
    );
    println!("run directory   {}", o.run_dir.display());
}

fn print_summary(s: &Summary) {
    println!("run directory   {}", s.run_dir.display());
    if let (Some(a), Some(b)) = (s.first_loss, s.last_loss) {
        println!("loss            {a:.4} → {b:.4} over {} steps", s.steps);
    }
    if let Some(v) = s.val_loss {
        println!("val_loss        {v:.4}");
    }
    if let Some(m) = &s.metric {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "{m:<15} {} before → {} after",
            f(s.metric_before),
            f(s.metric_after)
        );
    }
    if let Some(c) = &s.last_checkpoint {
        println!("checkpoint      {}", c.display());
        println!("model           {}", c.join("model").display());
    }
}
