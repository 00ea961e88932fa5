//! `automodel-cli data --config RECIPE [--show N] [--validation]`: the recipe's dataset as the
//! model will see it — rendered samples with the labelled spans marked, and statistics.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use automodel::data::{Dataset, Loader, Sample, stats};

use automodel::train::Recipe;

#[derive(clap::Args)]
pub struct DataArgs {
    /// The recipe (YAML); its `model` and `dataset` sections are used.
    #[arg(long)]
    config: PathBuf,
    /// How many samples to print, rendered with their labelled spans marked.
    #[arg(long, default_value_t = 3)]
    show: usize,
    /// Inspect `validation_dataset` instead of `dataset`.
    #[arg(long)]
    validation: bool,
}

pub fn data(a: DataArgs) -> anyhow::Result<()> {
    let recipe = Recipe::from_file(&a.config, &[])?;
    let (name, cfg) = if a.validation {
        let v = recipe.validation_dataset.clone().with_context(|| {
            format!("{}: no `validation_dataset` section", recipe.path.display())
        })?;
        ("validation_dataset", v)
    } else {
        ("dataset", recipe.dataset.clone())
    };
    cfg.validate()
        .with_context(|| format!("{}: {name}", recipe.path.display()))?;
    let batch_size = recipe.step_scheduler.local_batch_size;
    let model = recipe.model_path()?;
    let records = cfg.read(recipe.base())?;
    let has_media = records.iter().any(|r| match &r.sample {
        Ok(Sample::Chat(c)) => {
            let (i, a) = c.media();
            !i.is_empty() || !a.is_empty()
        }
        _ => false,
    });
    let encoder = recipe.encoder(&cfg, has_media)?;
    println!("model         {}", model.display());
    if has_media && model.is_file() {
        println!(
            "              (images and audio laid out with Gemma 3n's processor over this vocabulary)"
        );
    }
    println!("chat template {}", encoder.template.source);
    let marker: Vec<u32> = encoder.spans.marker.iter().map(|&x| x as u32).collect();
    println!(
        "labels        {}: from {:?} through {:?}",
        match cfg.labels {
            automodel::data::LabelMode::Answers => "assistant turns",
            automodel::data::LabelMode::All => "every token",
        },
        encoder.tokenizer.decode(&marker, false)?,
        encoder
            .tokenizer
            .decode(&[encoder.spans.stop as u32], false)?
    );
    let data = Dataset::prepare(records, &encoder, cfg.bad_samples)?;
    for s in data.samples.iter().take(a.show) {
        println!("\n── {} ──", s.origin);
        println!("{}", stats::show(&encoder, s));
    }
    let st = stats::Stats::of(&data);
    println!("\n{name}\n{st}");
    let loader = Loader::new(
        Arc::new(encoder),
        Arc::new(data),
        cfg.loader_config(batch_size),
    )?;
    let plan = loader.plan(0);
    let rows: usize = plan.iter().map(Vec::len).sum();
    println!(
        "batches       {} per epoch of up to {batch_size} row(s){}",
        plan.len(),
        match &cfg.packing {
            Some(p) => format!(", {rows} packed rows of ≤{} tokens", p.max_tokens),
            None => String::new(),
        }
    );
    Ok(())
}
