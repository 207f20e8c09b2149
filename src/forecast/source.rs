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

/// A model compiled into the binary.
pub struct EmbeddedModel {
    /// Its file stem in `models/` and its card's name; configuration and
    /// status call it `embedded:STEM`.
    pub stem: &'static str,
    pub onnx: &'static [u8],
    pub card: &'static str,
}

/// Equal when the stems are: each stem is compiled in once, so comparing
/// its 40 KB of ONNX bytes as well would say nothing more.
impl PartialEq for EmbeddedModel {
    fn eq(&self, other: &Self) -> bool {
        self.stem == other.stem
    }
}
impl Eq for EmbeddedModel {}

/// Its name, not its bytes: configurations and errors print it.
impl std::fmt::Debug for EmbeddedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "embedded:{}", self.stem)
    }
}

/// The shipped default forecaster (`models/ca1_lstm.onnx`).
pub static CA1_LSTM: EmbeddedModel = EmbeddedModel {
    stem: "ca1_lstm",
    onnx: include_bytes!("../../models/ca1_lstm.onnx"),
    card: include_str!("../../models/ca1_lstm.json"),
};
/// The family base model (`models/ca1_lstm_family.onnx`: randomised CA1
/// cells, measurement noise), embedded because it is `calibrate`'s default
/// warm start: a user's first command must not need the source tree.
pub static CA1_LSTM_FAMILY: EmbeddedModel = EmbeddedModel {
    stem: "ca1_lstm_family",
    onnx: include_bytes!("../../models/ca1_lstm_family.onnx"),
    card: include_str!("../../models/ca1_lstm_family.json"),
};
/// The spike-aware preset model (`models/ca1_lstm_spike.onnx`), embedded
/// because shipped scenarios (`burst`, `timing`) run MPC with it from any
/// directory.
pub static CA1_LSTM_SPIKE: EmbeddedModel = EmbeddedModel {
    stem: "ca1_lstm_spike",
    onnx: include_bytes!("../../models/ca1_lstm_spike.onnx"),
    card: include_str!("../../models/ca1_lstm_spike.json"),
};
/// Every embedded model, the default first.
pub static EMBEDDED: [&EmbeddedModel; 3] = [&CA1_LSTM, &CA1_LSTM_FAMILY, &CA1_LSTM_SPIKE];

/// How configuration and status name the embedded default model.
pub const EMBEDDED_NAME: &str = "embedded:ca1_lstm";
/// How configuration and status name the embedded family base model.
pub const FAMILY_NAME: &str = "embedded:ca1_lstm_family";

/// A model's origin, as configured (`control.model`, `--model`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A model compiled into this binary.
    Embedded(&'static EmbeddedModel),
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
    /// The embedded default model.
    pub const DEFAULT: ModelSource = ModelSource::Embedded(&CA1_LSTM);
    /// The embedded family base model.
    pub const FAMILY: ModelSource = ModelSource::Embedded(&CA1_LSTM_FAMILY);

    /// `embedded` or `embedded:STEM` name an embedded model (`ca1_lstm`,
    /// `ca1_lstm_family`, `ca1_lstm_spike`); anything else is a path.
    pub fn parse(s: &str) -> ModelSource {
        if s == "embedded" {
            return ModelSource::DEFAULT;
        }
        let stem = s.strip_prefix("embedded:");
        match EMBEDDED.iter().find(|m| Some(m.stem) == stem) {
            Some(m) => ModelSource::Embedded(m),
            None => ModelSource::File(PathBuf::from(s)),
        }
    }

    /// The name errors and status use: the path, or `embedded:STEM`.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Embedded(m) => format!("embedded:{}", m.stem),
            ModelSource::File(p) => p.display().to_string(),
        }
    }

    /// The stem a registry or a card calls it by.
    pub fn stem(&self) -> String {
        match self {
            ModelSource::Embedded(m) => m.stem.into(),
            ModelSource::File(p) => p
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        }
    }

    /// Where it came from, for `model info` and `GET /status`.
    pub fn origin(&self) -> String {
        match self {
            ModelSource::Embedded(m) => format!(
                "compiled into neurostimd {} (models/{}.onnx of its source)",
                env!("CARGO_PKG_VERSION"),
                m.stem
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
            ModelSource::Embedded(_) => None,
            ModelSource::File(p) => Some(p),
        }
    }

    /// The ONNX bytes and the checked card. A wrong path names the model
    /// file asked for, not its card.
    pub fn read(&self) -> Result<ModelFiles, ForecastError> {
        match self {
            ModelSource::Embedded(m) => Ok(ModelFiles {
                onnx: Cow::Borrowed(m.onnx),
                card_text: Cow::Borrowed(m.card),
                card: parse_card(&self.name(), m.card)?,
            }),
            ModelSource::File(path) => {
                let io = |p: &Path| {
                    let name = p.display().to_string();
                    move |error| ForecastError::Io { path: name, error }
                };
                let onnx = std::fs::read(path).map_err(|e| {
                    let name = path.to_string_lossy();
                    if name.starts_with("embedded:") && e.kind() == std::io::ErrorKind::NotFound {
                        ForecastError::UnknownEmbedded {
                            name: name.into_owned(),
                            known: EMBEDDED
                                .iter()
                                .map(|m| ModelSource::Embedded(m).name())
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    } else {
                        io(path)(e)
                    }
                })?;
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
    fn every_embedded_model_is_its_file_and_matches_its_card() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for m in EMBEDDED {
            let f = ModelSource::Embedded(m).read().unwrap();
            assert_eq!(super::super::sha256_hex(&f.onnx), f.card.onnx_sha256);
            assert_eq!(f.card.name, m.stem);
            assert_eq!(
                ModelSource::parse(&ModelSource::Embedded(m).name()),
                ModelSource::Embedded(m)
            );
            let file = root.join(format!("models/{}.onnx", m.stem));
            assert_eq!(&*f.onnx, &std::fs::read(file).unwrap()[..], "{}", m.stem);
        }
    }

    #[test]
    fn an_unknown_embedded_name_lists_the_embedded_models() {
        let e = ModelSource::parse("embedded:ca1_lstm_spikes")
            .read()
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("embedded:ca1_lstm_spikes: no such model"),
            "{e}"
        );
        for m in EMBEDDED {
            assert!(e.contains(&format!("embedded:{}", m.stem)), "{e}");
        }
    }

    #[test]
    fn an_embedded_source_debug_prints_its_name() {
        assert_eq!(
            format!("{:?}", ModelSource::FAMILY),
            "Embedded(embedded:ca1_lstm_family)"
        );
    }

    #[test]
    fn names_parse_to_sources() {
        assert_eq!(ModelSource::parse("embedded"), ModelSource::DEFAULT);
        assert_eq!(ModelSource::parse(EMBEDDED_NAME), ModelSource::DEFAULT);
        assert_eq!(ModelSource::parse(FAMILY_NAME), ModelSource::FAMILY);
        assert_eq!(
            ModelSource::parse("embedded:ca1_lstm_spike"),
            ModelSource::Embedded(&CA1_LSTM_SPIKE)
        );
        assert_eq!(
            ModelSource::parse("m/x.onnx"),
            ModelSource::File("m/x.onnx".into())
        );
    }
}
