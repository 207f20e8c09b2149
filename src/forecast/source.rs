//! Where a model comes from: a file on disk (with its card beside it) or
//! the shipped model compiled into the binary.
//!
//! The binary carries `models/ca1_lstm.onnx` and its card the way it carries
//! its default configuration, so `neurostimd --plant sim` works from any
//! directory and under systemd with no files installed. The embedded bytes
//! go through exactly the same checks as a file (card fields, sha256,
//! contract, probe): embedding is a way of shipping, not of trusting.

use super::{parse_card, ForecastError, ModelCard};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The shipped model's ONNX bytes.
pub const EMBEDDED_ONNX: &[u8] = include_bytes!("../../models/ca1_lstm.onnx");
/// The shipped model's card.
pub const EMBEDDED_CARD: &str = include_str!("../../models/ca1_lstm.json");
/// How configuration and status name the embedded model.
pub const EMBEDDED_NAME: &str = "embedded:ca1_lstm";
/// The family base model (`models/ca1_lstm_family.onnx`: randomised CA1
/// cells, measurement noise), embedded because it is `calibrate`'s default
/// warm start: a user's first command must not need the source tree.
pub const FAMILY_ONNX: &[u8] = include_bytes!("../../models/ca1_lstm_family.onnx");
/// The family base model's card.
pub const FAMILY_CARD: &str = include_str!("../../models/ca1_lstm_family.json");
/// How configuration and status name the embedded family base model.
pub const FAMILY_NAME: &str = "embedded:ca1_lstm_family";

/// A model's origin, as configured (`control.model`, `--model`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// The shipped model compiled into this binary.
    Embedded,
    /// The family base model compiled into this binary.
    EmbeddedFamily,
    /// `NAME.onnx` with its card `NAME.json` beside it.
    File(PathBuf),
}

/// A model's bytes and checked card, read from its source.
pub struct ModelFiles {
    pub onnx: Cow<'static, [u8]>,
    pub card_text: Cow<'static, str>,
    pub card: ModelCard,
}

impl ModelSource {
    /// `embedded` or `embedded:ca1_lstm` name the embedded model,
    /// `embedded:ca1_lstm_family` the family base model; anything else is a
    /// path.
    pub fn parse(s: &str) -> ModelSource {
        if s == "embedded" || s == EMBEDDED_NAME {
            ModelSource::Embedded
        } else if s == FAMILY_NAME {
            ModelSource::EmbeddedFamily
        } else {
            ModelSource::File(PathBuf::from(s))
        }
    }

    /// The name errors and status use: the path, or `embedded:ca1_lstm`.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Embedded => EMBEDDED_NAME.into(),
            ModelSource::EmbeddedFamily => FAMILY_NAME.into(),
            ModelSource::File(p) => p.display().to_string(),
        }
    }

    /// Where it came from, for `model info` and `GET /status`.
    pub fn origin(&self) -> String {
        match self {
            ModelSource::Embedded => format!(
                "compiled into neurostimd {} (models/ca1_lstm.onnx of its source)",
                env!("CARGO_PKG_VERSION")
            ),
            ModelSource::EmbeddedFamily => format!(
                "compiled into neurostimd {} (models/ca1_lstm_family.onnx of its source)",
                env!("CARGO_PKG_VERSION")
            ),
            ModelSource::File(p) => match std::fs::canonicalize(p) {
                Ok(abs) => format!("file {}", abs.display()),
                Err(_) => format!("file {}", p.display()),
            },
        }
    }

    /// The file path, if this is a file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelSource::Embedded | ModelSource::EmbeddedFamily => None,
            ModelSource::File(p) => Some(p),
        }
    }

    /// The ONNX bytes and the checked card. A wrong path names the model
    /// file asked for, not its card.
    pub fn read(&self) -> Result<ModelFiles, ForecastError> {
        match self {
            ModelSource::Embedded => Ok(ModelFiles {
                onnx: Cow::Borrowed(EMBEDDED_ONNX),
                card_text: Cow::Borrowed(EMBEDDED_CARD),
                card: parse_card(EMBEDDED_NAME, EMBEDDED_CARD)?,
            }),
            ModelSource::EmbeddedFamily => Ok(ModelFiles {
                onnx: Cow::Borrowed(FAMILY_ONNX),
                card_text: Cow::Borrowed(FAMILY_CARD),
                card: parse_card(FAMILY_NAME, FAMILY_CARD)?,
            }),
            ModelSource::File(path) => {
                let io = |p: &Path| {
                    let name = p.display().to_string();
                    move |error| ForecastError::Io { path: name, error }
                };
                let onnx = std::fs::read(path).map_err(io(path))?;
                let cp = super::card_path(path);
                let card_text = std::fs::read_to_string(&cp).map_err(io(&cp))?;
                let card = parse_card(&cp.display().to_string(), &card_text)?;
                Ok(ModelFiles {
                    onnx: Cow::Owned(onnx),
                    card_text: Cow::Owned(card_text),
                    card,
                })
            }
        }
    }
}

/// Serialised as its name (as configured), so reports and `summary.json`
/// say `embedded:ca1_lstm` or the path.
impl serde::Serialize for ModelSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_model_is_the_shipped_file_and_matches_its_card() {
        let m = ModelSource::Embedded.read().unwrap();
        assert_eq!(super::super::sha256_hex(&m.onnx), m.card.onnx_sha256);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            &*m.onnx,
            &std::fs::read(root.join("models/ca1_lstm.onnx")).unwrap()[..]
        );
    }

    #[test]
    fn the_embedded_family_model_is_its_file_and_matches_its_card() {
        let m = ModelSource::EmbeddedFamily.read().unwrap();
        assert_eq!(super::super::sha256_hex(&m.onnx), m.card.onnx_sha256);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            &*m.onnx,
            &std::fs::read(root.join("models/ca1_lstm_family.onnx")).unwrap()[..]
        );
    }

    #[test]
    fn names_parse_to_sources() {
        assert_eq!(ModelSource::parse("embedded"), ModelSource::Embedded);
        assert_eq!(ModelSource::parse(EMBEDDED_NAME), ModelSource::Embedded);
        assert_eq!(ModelSource::parse(FAMILY_NAME), ModelSource::EmbeddedFamily);
        assert_eq!(
            ModelSource::parse("m/x.onnx"),
            ModelSource::File("m/x.onnx".into())
        );
    }
}
