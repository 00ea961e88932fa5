use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;

use super::*;
use crate::CpuBackend as B;
use crate::error::WeightError;

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"old").unwrap();
    let err = replace_atomically(&path, |tmp| {
        std::fs::write(tmp, b"half a fi")?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("disk full"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    write_atomic(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn sample() -> TensorMap {
    let dev = Default::default();
    let mut m = TensorMap::new();
    m.insert(
        "a.weight",
        Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev),
    );
    m.insert(
        "b.weight",
        Tensor::<B, 1>::from_floats([5.0, 6.0, 7.0], &dev).cast(DType::BF16),
    );
    m.insert("c", Tensor::<B, 1>::from_floats([8.0], &dev));
    m
}

#[test]
fn single_file_round_trip_and_dtype_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let files = sample().save(dir.path(), None).unwrap();
    assert_eq!(files, vec![dir.path().join(SINGLE_FILE)]);
    let st = SafeTensorsFiles::open(dir.path()).unwrap();
    assert_eq!(
        st.names().collect::<Vec<_>>(),
        vec!["a.weight", "b.weight", "c"]
    );
    let loader = WeightLoader::<B>::new(&st, "", &Default::default(), DType::F32);
    let b = loader.tensor("b.weight", [3]);
    assert_eq!(b.dtype(), DType::F32);
    assert_eq!(b.into_data().to_vec::<f32>().unwrap(), vec![5.0, 6.0, 7.0]);
    let a = loader.tensor("a.weight", [2, 2]);
    assert_eq!(
        a.into_data().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    // `c` was never asked for.
    let err = loader.finish(|_| false).unwrap_err().to_string();
    assert!(err.contains("unexpected `c`"), "{err}");
}

#[test]
fn sharded_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let files = sample().save(dir.path(), Some(16)).unwrap();
    assert!(files.iter().any(|p| p.ends_with(INDEX_FILE)));
    assert!(files.len() >= 3, "{files:?}");
    let st = SafeTensorsFiles::open(dir.path()).unwrap();
    assert_eq!(st.paths().len(), files.len() - 1);
    assert_eq!(st.to_f32_vec("c").unwrap(), vec![8.0]);
    assert_eq!(st.to_f32_vec("a.weight").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn a_new_save_removes_the_weight_files_of_the_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    sample().save(dir.path(), None).unwrap();
    let many = sample().save(dir.path(), Some(1)).unwrap();
    assert!(!dir.path().join(SINGLE_FILE).exists(), "stale single file");
    let fewer = sample().save(dir.path(), Some(16)).unwrap();
    assert!(fewer.len() < many.len());
    let mut want: Vec<String> = fewer
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .chain(["notes.txt".to_string()])
        .collect();
    want.sort();
    assert_eq!(names(dir.path()), want, "no stale shards");
    sample().save(dir.path(), None).unwrap();
    assert_eq!(names(dir.path()), vec!["model.safetensors", "notes.txt"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    sample().save(dir.path(), None).unwrap();
    let st = SafeTensorsFiles::open(dir.path()).unwrap();
    let loader = WeightLoader::<B>::new(&st, "", &Default::default(), DType::F32);
    let _ = loader.tensor("a.weight", [2, 3]);
    let _ = loader.tensor("missing.weight", [4]);
    let err = loader.finish(|k| k == "b.weight").unwrap_err();
    // the error names the checkpoint it is about
    let WeightError::In { path, error } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &dir.path().join(SINGLE_FILE));
    // one message: the inner error is not also a cause (it would print twice)
    assert!(std::error::Error::source(&err).is_none());
    let WeightError::Mismatch { problems } = error.as_ref() else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 3, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("`a.weight` has shape [2, 2], expected [2, 3]"),
        "{text}"
    );
    assert!(text.contains("missing `missing.weight`"), "{text}");
    assert!(text.contains("unexpected `c`"), "{text}");
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = SafeTensorsFiles::open(dir.path()).unwrap_err();
    assert!(matches!(err, WeightError::NotFound { .. }), "{err}");
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let err = SafeTensorsFiles::open(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.safetensors"), "{err}");
    let idx = dir.path().join(INDEX_FILE);
    std::fs::write(&idx, r#"{"weight_map": {"x": "../evil.safetensors"}}"#).unwrap();
    let err = SafeTensorsFiles::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("outside the checkpoint folder"), "{err}");
}
