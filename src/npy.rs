//! NumPy `.npy` files of little-endian float32, C order: the exchange format
//! of `neurostimd model run` and of model bundles, readable by numpy,
//! PyTorch and the field's tools without conversion.

use std::io::Write;
use std::path::Path;

/// An n-dimensional float32 array.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a float32 .npy file: {what}")]
    Format { path: String, what: String },
}

const MAGIC: &[u8] = b"\x93NUMPY";

impl NpyF32 {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> NpyF32 {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape and data disagree"
        );
        NpyF32 { shape, data }
    }

    pub fn read(path: &Path) -> Result<NpyF32, NpyError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
            path: name.clone(),
            error: source,
        })?;
        Self::parse(&bytes).map_err(|what| NpyError::Format { path: name, what })
    }

    /// Parse the bytes of a `.npy` file (format versions 1.0–3.0).
    pub fn parse(bytes: &[u8]) -> Result<NpyF32, String> {
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err("missing the \\x93NUMPY magic".into());
        }
        let major = bytes[6];
        let (header_len, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            _ => return Err(format!("unsupported format version {major}")),
        };
        let header = bytes
            .get(start..start + header_len)
            .ok_or("header is truncated")?;
        let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
        let field = |key: &str| -> Result<&str, String> {
            let at = header
                .find(&format!("'{key}'"))
                .ok_or(format!("header lacks '{key}'"))?;
            Ok(header[at + key.len() + 2..]
                .trim_start()
                .trim_start_matches(':')
                .trim_start())
        };
        let descr = field("descr")?;
        if !(descr.starts_with("'<f4'") || descr.starts_with("'float32'")) {
            return Err(format!(
                "dtype {} is not little-endian float32 ('<f4')",
                descr.split(',').next().unwrap_or(descr)
            ));
        }
        if field("fortran_order")?.starts_with("True") {
            return Err("Fortran order is not supported; save with C order".into());
        }
        let shape_text = field("shape")?;
        let open = shape_text.find('(').ok_or("shape is not a tuple")?;
        let close = shape_text.find(')').ok_or("shape is not a tuple")?;
        let shape = shape_text[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| format!("bad dimension `{s}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n: usize = shape.iter().product();
        let body = &bytes[start + header_len..];
        if body.len() != n * 4 {
            return Err(format!(
                "shape {shape:?} needs {} data bytes, file has {}",
                n * 4,
                body.len()
            ));
        }
        let data = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(NpyF32 { shape, data })
    }

    /// The bytes of a version 1.0 `.npy` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        // Pad so that the data starts on a 64-byte boundary, ending in '\n'.
        let unpadded = MAGIC.len() + 4 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for x in &self.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), NpyError> {
        let io = |source| NpyError::Io {
            path: path.display().to_string(),
            error: source,
        };
        let mut f = std::fs::File::create(path).map_err(io)?;
        f.write_all(&self.to_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        let a = NpyF32::new(
            vec![2, 3],
            vec![1.0, -2.5, 3.0, 4.0, 5.0, f32::MIN_POSITIVE],
        );
        let b = a.to_bytes();
        assert_eq!((b.len() - a.data.len() * 4) % 64, 0);
        assert_eq!(NpyF32::parse(&b).unwrap(), a);
        let v = NpyF32::new(vec![3], vec![1.0, 2.0, 3.0]);
        assert!(String::from_utf8_lossy(&v.to_bytes()).contains("'shape': (3,)"));
        assert_eq!(NpyF32::parse(&v.to_bytes()).unwrap(), v);
    }

    #[test]
    fn wrong_dtype_and_truncation_are_named() {
        let mut b = NpyF32::new(vec![2], vec![1.0, 2.0]).to_bytes();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        let mut f8 = b.clone();
        f8[at + 2] = b'8';
        let e = NpyF32::parse(&f8).unwrap_err();
        assert!(e.contains("'<f8'"), "{e}");
        b.pop();
        assert!(NpyF32::parse(&b)
            .unwrap_err()
            .contains("needs 8 data bytes"));
        assert!(NpyF32::parse(b"hello").is_err());
    }
}
