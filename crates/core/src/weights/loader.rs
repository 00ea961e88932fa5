//! [`WeightLoader`]: checkpoint tensors handed to model constructors by key, every problem
//! collected into one error.

use std::cell::RefCell;
use std::collections::BTreeSet;

use burn::prelude::*;
use burn::tensor::DType;

use super::TensorSource;
use crate::Backend;
use crate::error::{KeyProblem, WeightError};

/// Hands checkpoint tensors to model constructors and collects every mismatch.
///
/// Keys are given relative to a prefix (e.g. `model.language_model.`). Constructors ask for
/// tensors with their expected shape; a problem is recorded and a zero tensor returned so that
/// construction can continue and [`WeightLoader::finish`] can report everything at once.
pub struct WeightLoader<'a, B: Backend> {
    files: &'a dyn TensorSource,
    prefix: String,
    device: B::Device,
    dtype: DType,
    used: RefCell<BTreeSet<String>>,
    problems: RefCell<Vec<KeyProblem>>,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    /// A loader that reads keys `{prefix}{name}` and creates tensors of `dtype` on `device`.
    pub fn new(
        files: &'a dyn TensorSource,
        prefix: impl Into<String>,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        Self {
            files,
            prefix: prefix.into(),
            device: device.clone(),
            dtype,
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The dtype tensors are created with.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `{prefix}{name}` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.files
            .tensor_shape(&format!("{}{name}", self.prefix))
            .is_some()
    }

    /// Mark `{prefix}{name}` as known (used or deliberately ignored).
    pub fn mark_used(&self, name: &str) {
        self.used
            .borrow_mut()
            .insert(format!("{}{name}", self.prefix));
    }

    /// Read `{prefix}{name}` with the expected shape, converted to the loader's dtype. On a
    /// problem (recorded for [`Self::finish`]) the result is a broadcast zero that costs no
    /// memory, so a config that declares sizes the checkpoint does not have never allocates them.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        self.try_tensor(name, shape).unwrap_or_else(|| {
            Tensor::<B, D>::zeros([1; D], (&self.device, self.dtype)).expand(shape)
        })
    }

    /// Like [`Self::tensor`] but returns `None` (after recording the problem) on failure.
    pub(crate) fn try_tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Option<Tensor<B, D>> {
        let key = format!("{}{name}", self.prefix);
        self.used.borrow_mut().insert(key.clone());
        let Some(found) = self.files.tensor_shape(&key) else {
            self.problems.borrow_mut().push(KeyProblem::Missing {
                key,
                expected: shape.to_vec(),
            });
            return None;
        };
        if found != shape {
            self.problems.borrow_mut().push(KeyProblem::Shape {
                key,
                expected: shape.to_vec(),
                found: found.to_vec(),
            });
            return None;
        }
        let bytes = (shape.iter().product::<usize>() * self.dtype.size()) as u64;
        if let Some(max) = B::max_tensor_bytes(&self.device)
            && bytes > max
        {
            self.problems
                .borrow_mut()
                .push(KeyProblem::TooLarge { key, bytes, max });
            return None;
        }
        match self.files.tensor_data(&key) {
            Ok(data) => Some(Tensor::from_data(
                data.convert_dtype(self.dtype),
                (&self.device, self.dtype),
            )),
            Err(WeightError::Mismatch { problems }) => {
                self.problems.borrow_mut().extend(problems);
                None
            }
            Err(e) => {
                self.problems.borrow_mut().push(KeyProblem::Unreadable {
                    key,
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// Record a problem found by a constructor itself.
    pub fn report(&self, problem: KeyProblem) {
        self.problems.borrow_mut().push(problem);
    }

    /// Finish loading: every key under the prefix that nobody used (and that `ignore` does not
    /// accept) is reported as unexpected; any problem makes this an error listing all of them.
    pub fn finish(self, ignore: impl Fn(&str) -> bool) -> Result<(), WeightError> {
        let used = self.used.into_inner();
        let mut problems = self.problems.into_inner();
        for name in self.files.tensor_names() {
            let name = name.as_str();
            if let Some(rel) = name.strip_prefix(&self.prefix)
                && !used.contains(name)
                && !ignore(rel)
            {
                problems.push(KeyProblem::Unexpected {
                    key: name.to_string(),
                });
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let e = WeightError::Mismatch { problems };
        Err(match self.files.origin() {
            Some(path) => WeightError::In {
                path,
                error: Box::new(e),
            },
            None => e,
        })
    }
}
