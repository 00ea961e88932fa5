use super::measure::{Measure, stats};
use super::report::{Row, markdown_table};
use super::workload::{batch_spec, flops_per_token, gemma3n_config, kernel, w, workloads};

#[test]
fn stats_are_median_min_max() {
    assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
    assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
}

#[test]
fn image_batches_put_soft_tokens_after_boi_without_labels() {
    let wl = w("gemma3n-tiny", "full", "image+text", 2, 32, 0, "cpu");
    let b = batch_spec(&wl).unwrap();
    let cfg = gemma3n_config("gemma3n-tiny").unwrap();
    for (ids, labels) in b.input_ids.iter().zip(&b.labels) {
        assert_eq!(ids.len(), 32);
        assert_eq!(ids[1], cfg.boi_token_id);
        let n = ids.iter().filter(|&&t| t == cfg.image_token_id).count();
        assert_eq!(n, cfg.vision_soft_tokens_per_image);
        assert_eq!(ids[2 + n], cfg.eoi_token_id);
        assert_eq!(labels.iter().filter(|&&l| l == -100).count(), n);
    }
    assert_eq!(b.image_side, Some(128));
    let short = w("gemma3n-tiny", "full", "image+text", 1, 8, 0, "cpu");
    assert!(batch_spec(&short).is_err());
}

#[test]
fn e4b_full_costs_about_26_gflop_per_token_and_lora_two_thirds() {
    // E4B computes with about 4.4 B parameters: a full step 6 × 4.4 ≈ 26 GFLOP per token
    let wl = w("gemma3n-E4B", "full", "text", 1, 1024, 0, "cuda");
    let f = flops_per_token(&wl).unwrap();
    assert!((20e9..32e9).contains(&f), "{f} FLOP per token");
    let mut g = wl.clone();
    g.mode = "generate".into();
    let fwd = flops_per_token(&g).unwrap();
    assert!((fwd * 3.0 - f).abs() < 1.0);
    // LoRA computes no base-weight gradient: between 2× and 3× the forward pass, nearer 2×
    g.mode = "lora".into();
    let lora = flops_per_token(&g).unwrap();
    assert!(
        lora > 2.0 * fwd && lora < 2.2 * fwd,
        "{lora} vs forward {fwd}"
    );
}

#[test]
fn kernels_count_their_own_flops() {
    let mm = kernel("matmul", 2, 3, 5, "cpu");
    assert_eq!(mm.name, "kernel-matmul-2x3x5");
    assert_eq!(flops_per_token(&mm).unwrap(), 60.0);
    let e = kernel("exp", 4, 8, 1, "cpu");
    assert_eq!(e.name, "kernel-exp-4x8");
    assert_eq!(flops_per_token(&e).unwrap(), 32.0);
    // every CPU workload has a distinct name (the key of docs/benchmarks.json)
    let names: std::collections::BTreeSet<String> = workloads("cpu", false)
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names.len(), workloads("cpu", false).len());
}

#[test]
fn the_cpu_list_has_a_bf16_step_that_wgpu_leaves_out() {
    let cpu = workloads("cpu", false);
    let b = cpu.iter().find(|w| w.dtype == "bfloat16").unwrap();
    assert_eq!(b.name, "gemma3-270m-lora-bf16-b1-s256");
    assert_eq!(b.mode, "lora");
    let gpu = workloads("wgpu", false);
    assert_eq!(gpu.len(), cpu.len() - 1);
    assert!(
        gpu.iter()
            .all(|w| w.dtype == "float32" && w.name.ends_with("-wgpu"))
    );
}

#[test]
fn markdown_rows_show_the_ratio() {
    let m = Measure {
        median_s: 2.0,
        min_s: 1.5,
        max_s: 2.5,
        tokens_per_s: 128.0,
        peak_mem_mib: Some(900.0),
        loss: Some(1.0),
        threads: 2,
        mfu: None,
        stack: "x".into(),
    };
    let mut p = m.clone();
    p.tokens_per_s = 64.0;
    let row = Row {
        workload: w("gemma-3-270m", "lora", "text", 1, 256, 0, "cpu"),
        date: "2026-12-01".into(),
        device_name: "cpu".into(),
        ours: m,
        pytorch: Some(p),
        speedup: Some(2.0),
        ratios: vec![2.0],
        flops_per_token: None,
    };
    let t = markdown_table(std::slice::from_ref(&row));
    assert!(t.contains("| gemma3-270m-lora-b1-s256 |"), "{t}");
    assert!(t.contains("2.00×"), "{t}");
    // several rounds: the median and the spread
    let rounds = Row {
        ratios: vec![1.8, 2.0, 2.3],
        ..row
    };
    let t = markdown_table(&[rounds]);
    assert!(t.contains("2.00× (1.80–2.30, 3 rounds)"), "{t}");
}

#[test]
fn the_loss_counts_labels_as_hugging_face_does() {
    // labels are shifted inside the loss: a row's first label is never predicted
    let wl = w("gemma-3-270m", "lora", "text", 1, 256, 0, "cpu");
    assert_eq!(batch_spec(&wl).unwrap().label_tokens(), 255);
    let img = w("gemma3n-tiny", "full", "image+text", 2, 32, 0, "cpu");
    let soft = gemma3n_config("gemma3n-tiny")
        .unwrap()
        .vision_soft_tokens_per_image;
    assert_eq!(batch_spec(&img).unwrap().label_tokens(), 2 * (31 - soft));
}

#[test]
fn lora_counts_its_adapters_and_no_base_weight_gradient() {
    let full = w("gemma3n-tiny", "full", "text", 1, 64, 0, "cpu");
    let mut lora = full.clone();
    lora.mode = "lora".into();
    let mut fwd = full.clone();
    fwd.mode = "generate".into();
    let (f, l, g) = (
        flops_per_token(&full).unwrap(),
        flops_per_token(&lora).unwrap(),
        flops_per_token(&fwd).unwrap(),
    );
    assert!((f - 3.0 * g).abs() < 1.0, "{f} vs 3 × {g}");
    // more than twice the forward pass (adapters, attention backward), less than a full step
    assert!(l > 2.0 * g && l < f, "lora {l}, forward {g}, full {f}");
    let mut bad = full;
    bad.mode = "sideways".into();
    assert!(flops_per_token(&bad).is_err());
}

fn measure(s_per_step: f64, tps: f64) -> Measure {
    Measure {
        median_s: s_per_step,
        min_s: s_per_step,
        max_s: s_per_step,
        tokens_per_s: tps,
        peak_mem_mib: Some(1000.0),
        loss: Some(1.0),
        threads: 2,
        mfu: None,
        stack: "x".into(),
    }
}

#[test]
fn the_readme_lines_quote_only_interleaved_records_the_latest_per_cpu() {
    let row = |cpu: &str, date: &str, ratios: Vec<f64>| Row {
        workload: w("gemma-3-270m", "lora", "text", 1, 256, 0, "cpu"),
        date: date.into(),
        device_name: cpu.into(),
        ours: measure(2.0, 128.0),
        pytorch: Some(measure(3.0, 85.3)),
        speedup: ratios.get(ratios.len() / 2).copied(),
        ratios,
        flops_per_token: None,
    };
    let rows = vec![
        row("CPU A", "2026-12-01", vec![1.4]),
        row("CPU A", "2026-12-02", vec![1.1, 1.2, 1.3]),
        row("CPU A", "2026-12-03", vec![1.0, 1.05, 1.1]),
        row("CPU B", "2026-12-02", vec![0.9, 0.95, 1.0]),
    ];
    let s = super::report::summary_lines(&rows);
    let lora: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("270M LoRA step ("))
        .collect();
    assert_eq!(lora.len(), 2, "{s}");
    assert!(
        lora[0].contains("1.05× (1.00–1.10, 3 rounds)")
            && lora[0].contains("CPU A, 2 thread(s) each side, 2026-12-03"),
        "{s}"
    );
    assert!(
        lora[1].contains("0.95×") && lora[1].contains("CPU B"),
        "{s}"
    );
    // the single pair is never quoted; a workload without a record says so
    assert!(!s.contains("1.40×"), "{s}");
    assert!(
        s.contains("greedy decoding (64 new tokens): no record"),
        "{s}"
    );
}

#[test]
fn the_data_parallel_block_compares_with_one_thread_and_all_cores() {
    use super::dp::{DpRecord, DpRow, Setup, dp_markdown};
    let row = |workers, threads, tps| DpRow {
        setup: Setup {
            workers,
            threads_per_worker: threads,
        },
        tps_median: tps,
        tps_min: tps,
        tps_max: tps,
    };
    let rec = DpRecord {
        date: "2026-12-07".into(),
        cpu: "CPU (2 cores)".into(),
        rounds: 3,
        steps: 4,
        warmup: 1,
        rows: vec![row(1, 1, 80.0), row(2, 1, 150.0), row(1, 2, 140.0)],
        loss_rel_diff: 1e-7,
        grad_norm_rel_diff: 2e-7,
    };
    let t = dp_markdown(&rec);
    assert!(
        t.contains("| 2 workers, 1 thread each | 150.0 (150.0–150.0) | 1.88× | 1.07× |"),
        "{t}"
    );
    assert!(
        t.contains("| 1 process, 2 threads | 140.0 (140.0–140.0) | 1.75× | — |"),
        "{t}"
    );
    assert!(
        t.contains("| 1 process, 1 thread | 80.0 (80.0–80.0) | — | 0.57× |"),
        "{t}"
    );
}
