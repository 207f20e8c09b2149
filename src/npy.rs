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

/// What a `.npy` header says.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    /// The dtype string without quotes, e.g. `<f4`, `<i8`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Offset of the first data byte.
    pub data_start: usize,
}

/// Parse the header of a `.npy` file of any dtype (format versions
/// 1.0–3.0).
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
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
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("descr is not a quoted string")?
        .to_string();
    let fortran_order = field("fortran_order")?.starts_with("True");
    let shape_text = field("shape")?;
    let open = shape_text.find('(').ok_or("shape is not a tuple")?;
    let close = shape_text[open..]
        .find(')')
        .map(|c| open + c)
        .ok_or("shape is not a tuple")?;
    let shape = shape_text[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension `{s}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
        data_start: start + header_len,
    })
}

impl NpyHeader {
    /// Bytes of data the shape declares at `item` bytes per value; an
    /// error (not a wrapped number) when a damaged header declares more
    /// than any file can hold.
    pub fn data_bytes(&self, item: usize) -> Result<usize, String> {
        self.shape
            .iter()
            .try_fold(item, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("shape {:?} is larger than any file", self.shape))
    }
}

/// Length of the headers [`fixed_header`] writes.
pub const FIXED_HEADER_LEN: usize = 128;

/// A version 1.0 header of exactly [`FIXED_HEADER_LEN`] bytes, so a file
/// that grows can have its shape rewritten in place (recordings update it at
/// every flush; `neurostimd recover` after a crash).
pub fn fixed_header(descr: &str, shape: &[usize]) -> [u8; FIXED_HEADER_LEN] {
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut out = [b' '; FIXED_HEADER_LEN];
    out[..6].copy_from_slice(MAGIC);
    out[6] = 1;
    out[7] = 0;
    let len = (FIXED_HEADER_LEN - 10) as u16;
    out[8..10].copy_from_slice(&len.to_le_bytes());
    let n = dict.len().min(FIXED_HEADER_LEN - 11);
    out[10..10 + n].copy_from_slice(&dict.as_bytes()[..n]);
    out[FIXED_HEADER_LEN - 1] = b'\n';
    out
}

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

    /// Parse the bytes of a float32 `.npy` file (format versions 1.0–3.0).
    pub fn parse(bytes: &[u8]) -> Result<NpyF32, String> {
        let h = parse_header(bytes)?;
        if !(h.descr == "<f4" || h.descr == "float32") {
            return Err(format!(
                "dtype '{}' is not little-endian float32 ('<f4')",
                h.descr
            ));
        }
        if h.fortran_order {
            return Err("Fortran order is not supported; save with C order".into());
        }
        let want = h.data_bytes(4)?;
        let body = &bytes[h.data_start..];
        if body.len() != want {
            return Err(format!(
                "shape {:?} needs {} data bytes, file has {}",
                h.shape,
                want,
                body.len()
            ));
        }
        let data = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(NpyF32 {
            shape: h.shape,
            data,
        })
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

    /// Damaged headers found by the edge fuzz (tests/fuzz_edges.rs): a
    /// shape whose parentheses are reversed, and shapes whose size
    /// overflows, are errors, not panics or wrapped sizes.
    #[test]
    fn damaged_shapes_are_errors() {
        let with = |shape: &str| {
            let mut b = fixed_header("<f4", &[1]).to_vec();
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            b[10..10 + dict.len()].copy_from_slice(dict.as_bytes());
            b.extend_from_slice(&[0; 4]);
            b
        };
        assert!(NpyF32::parse(&with(")3(")).is_err());
        let e = NpyF32::parse(&with("(4294967296, 4294967296)")).unwrap_err();
        assert!(e.contains("larger than any file"), "{e}");
        let e = NpyF32::parse(&with("(4611686018427387904,)")).unwrap_err();
        assert!(e.contains("larger than any file"), "{e}");
    }

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

    #[test]
    fn fixed_headers_parse_and_keep_their_length() {
        for shape in [&[0usize][..], &[12_345_678_901], &[7, 20]] {
            let h = fixed_header("<i8", shape);
            let p = parse_header(&h).unwrap();
            assert_eq!(p.descr, "<i8");
            assert_eq!(p.shape, shape);
            assert_eq!(p.data_start, FIXED_HEADER_LEN);
            assert!(!p.fortran_order);
        }
        let mut f = fixed_header("<f4", &[2]).to_vec();
        f.extend_from_slice(&1.5f32.to_le_bytes());
        f.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(NpyF32::parse(&f).unwrap().data, vec![1.5, -2.0]);
    }
}
