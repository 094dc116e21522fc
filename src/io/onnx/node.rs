//! One ONNX node as the importer sees it: its attributes, checked against what the operator
//! defines, and errors that name the node and its operator.

use super::proto::attribute_proto::AttributeType;
use super::proto::{AttributeProto, NodeProto, TensorProto};

use crate::error::Error;

/// A node under import.
pub(super) struct Node<'a> {
    pub(super) proto: &'a NodeProto,
}

impl<'a> Node<'a> {
    /// An error about this node.
    pub(super) fn error(&self, what: impl Into<String>) -> Error {
        Error::OnnxNode {
            node: self.proto.name.clone(),
            op: self.proto.op_type.clone(),
            what: what.into(),
        }
    }

    /// The node's `i`-th input name, `None` when absent or empty (an omitted optional input).
    pub(super) fn input(&self, i: usize) -> Option<&'a str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The node's `i`-th input name, required.
    pub(super) fn required_input(&self, i: usize) -> Result<&'a str, Error> {
        self.input(i)
            .ok_or_else(|| self.error(format!("input {i} is missing")))
    }

    /// Refuses attributes outside `known` (an ignored attribute could change the result).
    pub(super) fn only_attributes(&self, known: &[&str]) -> Result<(), Error> {
        match self
            .proto
            .attribute
            .iter()
            .find(|a| !known.contains(&a.name.as_str()))
        {
            Some(a) => Err(self.error(format!(
                "attribute {:?} is not supported (known: {})",
                a.name,
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn attribute(
        &self,
        name: &str,
        kind: AttributeType,
    ) -> Result<Option<&'a AttributeProto>, Error> {
        match self.proto.attribute.iter().find(|a| a.name == name) {
            None => Ok(None),
            Some(a) if a.r#type == kind as i32 => Ok(Some(a)),
            Some(a) => Err(self.error(format!(
                "attribute {name:?} has type {}, expected {}",
                AttributeType::try_from(a.r#type).map_or("unknown", |t| t.as_str_name()),
                kind.as_str_name()
            ))),
        }
    }

    /// Integer attribute `name`, or `default`.
    pub(super) fn int(&self, name: &str, default: i64) -> Result<i64, Error> {
        Ok(self
            .attribute(name, AttributeType::Int)?
            .map_or(default, |a| a.i))
    }

    /// Float attribute `name`, or `default`.
    pub(super) fn float(&self, name: &str, default: f32) -> Result<f32, Error> {
        Ok(self
            .attribute(name, AttributeType::Float)?
            .map_or(default, |a| a.f))
    }

    /// Integer-list attribute `name`, if present.
    pub(super) fn ints(&self, name: &str) -> Result<Option<&'a [i64]>, Error> {
        Ok(self
            .attribute(name, AttributeType::Ints)?
            .map(|a| a.ints.as_slice()))
    }

    /// String attribute `name`, or `default`.
    pub(super) fn string(&self, name: &str, default: &str) -> Result<String, Error> {
        Ok(self
            .attribute(name, AttributeType::String)?
            .map_or(default.to_string(), |a| {
                String::from_utf8_lossy(&a.s).into_owned()
            }))
    }

    /// Tensor attribute `name`, if present.
    pub(super) fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, Error> {
        Ok(self
            .attribute(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }

    /// A list attribute of 2 positive values per spatial axis (`kernel_shape`, `strides`,
    /// `dilations`), or `default` on both axes when absent.
    pub(super) fn pair(&self, name: &str, default: usize) -> Result<(usize, usize), Error> {
        match self.ints(name)? {
            None => Ok((default, default)),
            Some(&[a, b]) if a > 0 && b > 0 => Ok((a as usize, b as usize)),
            Some(v) => Err(self.error(format!(
                "attribute {name:?} = {v:?}: expected two positive values (2-D only)"
            ))),
        }
    }

    /// The `pads` attribute `[top, left, bottom, right]` (zeros when absent), after
    /// `auto_pad`; `kernel` is the dilated window, used for SAME padding at stride 1.
    pub(super) fn pads(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
    ) -> Result<[usize; 4], Error> {
        let auto = self.string("auto_pad", "NOTSET")?;
        let same = |upper: bool| -> Result<[usize; 4], Error> {
            if stride != (1, 1) {
                return Err(self.error(format!(
                    "auto_pad {auto} with stride {stride:?} depends on the input size; export \
                     with explicit pads"
                )));
            }
            let split = |total: usize| {
                if upper {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            };
            let (top, bottom) = split(kernel.0 - 1);
            let (left, right) = split(kernel.1 - 1);
            Ok([top, left, bottom, right])
        };
        match auto.as_str() {
            "NOTSET" => {}
            "VALID" => return Ok([0; 4]),
            "SAME_UPPER" => return same(true),
            "SAME_LOWER" => return same(false),
            other => return Err(self.error(format!("auto_pad {other:?} is not defined"))),
        }
        match self.ints("pads")? {
            None => Ok([0; 4]),
            Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
                Ok([t as usize, l as usize, b as usize, r as usize])
            }
            Some(v) => Err(self.error(format!(
                "pads {v:?}: expected four non-negative values [top, left, bottom, right]"
            ))),
        }
    }
}
