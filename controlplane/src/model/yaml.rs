//! Reading config as users write it: one or more YAML (or JSON) documents. Hostile input is
//! bounded before it is parsed: size, nesting, aliases, node count.

use serde_json::Value;

use super::Resource;
use super::document::{self, FieldError};

/// The largest config request we read. Istio objects are small; ten megabytes of YAML is an
/// attack or a mistake.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
const MAX_DEPTH: usize = 48;
const MAX_DOCUMENTS: usize = 1000;

/// A refused input: which document, which field, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("input is {size} bytes; the limit is {MAX_INPUT_BYTES}")]
    TooLarge { size: usize },
    /// The YAML itself is malformed or exceeds a parsing budget (nesting, aliases, nodes).
    #[error("not valid YAML: {0}")]
    Syntax(String),
    /// Document `index` (0-based) parsed but was refused.
    #[error("document {index}{}: {error}", name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Document {
        index: usize,
        name: Option<String>,
        error: FieldError,
    },
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_documents: MAX_DOCUMENTS,
            max_aliases: 256,
            max_anchors: 256,
            max_nodes: 200_000,
            max_events: 500_000,
            max_recorded_anchor_events: 10_000,
            max_total_scalar_bytes: MAX_INPUT_BYTES,
        },
    }
}

/// Parses every document of `input` into raw JSON values, within the budgets.
pub fn documents(input: &str) -> Result<Vec<Value>, InputError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(InputError::TooLarge { size: input.len() });
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(input, options())
        .map_err(|e| InputError::Syntax(first_line(&e.to_string())))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Parses and validates every document; the first refusal names its document and field.
pub fn resources(input: &str, default_namespace: &str) -> Result<Vec<Resource>, InputError> {
    documents(input)?
        .into_iter()
        .enumerate()
        .map(|(index, doc)| {
            let name = describe(&doc);
            document::from_value(doc, default_namespace).map_err(|error| InputError::Document {
                index,
                name,
                error,
            })
        })
        .collect()
}

/// `Kind/name` of a document, when it has them, so errors point at the object.
fn describe(doc: &Value) -> Option<String> {
    let kind = doc.get("kind")?.as_str()?;
    let name = doc.get("metadata")?.get("name")?.as_str()?;
    Some(format!("{kind}/{name}"))
}

/// Parser messages can quote large parts of the input; keep them to one bounded line.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}
