//! The bench-rig wire protocol (DESIGN §6, `docs/protocol.md`): pure
//! encoding and decoding, no I/O.
//!
//! A frame is `type (u8) | sequence (u16) | payload (fixed size per type) |
//! CRC-16 (u16)`, little-endian, COBS-encoded and terminated by a 0x00
//! byte. Fixed-size payloads of plain integers keep firmware simple (a C
//! struct and a table-driven CRC), and make the longest frame 31 bytes, so
//! the decoder works in a fixed 40-byte buffer: it never allocates, and no
//! input (noise, a flood of garbage, a missing delimiter) can make it grow.
//! Every malformed frame is reported as a [`FrameError`] and counted by the
//! caller; the decoder then resynchronises at the next 0x00.

use crc::{Crc, CRC_16_IBM_3740};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;

/// CRC-16/IBM-3740 (also called CCITT-FALSE): polynomial 0x1021, initial
/// value 0xFFFF, no reflection, no final XOR. Check value of "123456789"
/// is 0x29B1.
pub const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// Bytes of type, sequence and CRC around every payload.
const OVERHEAD: usize = 5;
/// Longest frame before COBS (a Sample).
pub const MAX_FRAME: usize = OVERHEAD + 26;
/// Longest encoded frame including the 0x00 delimiter (COBS adds one byte
/// per 254 and one at the start).
pub const MAX_WIRE: usize = MAX_FRAME + 2;
/// Decoder buffer: anything longer before a delimiter is not a frame.
const DECODE_BUF: usize = 40;

/// Frame types and their payload sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Sample = 2,
    Command = 3,
    Heartbeat = 4,
    Fault = 5,
}

impl FrameType {
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            1 => FrameType::Hello,
            2 => FrameType::Sample,
            3 => FrameType::Command,
            4 => FrameType::Heartbeat,
            5 => FrameType::Fault,
            _ => return None,
        })
    }

    /// Payload bytes of this type.
    pub fn payload_len(self) -> usize {
        match self {
            FrameType::Hello => 20,
            FrameType::Sample => 26,
            FrameType::Command => 18,
            FrameType::Heartbeat => 8,
            FrameType::Fault => 6,
        }
    }
}

/// Unit codes in a `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoltageUnit {
    Millivolt = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurrentUnit {
    /// µA/cm² (a model or dynamic-clamp cell, as the simulator).
    MicroampPerCm2 = 1,
    NanoAmp = 2,
    PicoAmp = 3,
}

/// What a rig says about itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hello {
    pub version: u16,
    pub rig_id: u32,
    pub sample_rate_hz: u32,
    /// Unit codes ([`VoltageUnit`], [`CurrentUnit`]).
    pub v_unit: u8,
    pub i_unit: u8,
    /// Value of one count of V and of I, in their units.
    pub v_scale: f32,
    pub i_scale: f32,
}

/// One membrane sample from the rig.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleFrame {
    /// Rig clock at the sample, µs.
    pub t_us: u64,
    /// Membrane potential and the current applied over the sample, counts.
    pub v: i32,
    pub i_applied: i32,
    /// `daemon_us` of the last command the rig applied (0: none yet), and
    /// that command's sequence number: the round trip is now − echo.
    pub echo_us: u64,
    pub cmd_seq: u16,
}

/// A stimulation command to the rig.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandFrame {
    /// Sequence number of the sample this answers.
    pub answers: u16,
    /// Current, counts of the rig's `i_scale`.
    pub amplitude: i32,
    /// The rig returns to zero if no newer command arrives within this, µs.
    pub valid_for_us: u32,
    /// Daemon clock when sent, µs (echoed back in samples).
    pub daemon_us: u64,
}

/// A frame's content.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Body {
    Hello(Hello),
    Sample(SampleFrame),
    Command(CommandFrame),
    Heartbeat { t_us: u64 },
    Fault { code: u16, detail: u32 },
}

impl Body {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Body::Hello(_) => FrameType::Hello,
            Body::Sample(_) => FrameType::Sample,
            Body::Command(_) => FrameType::Command,
            Body::Heartbeat { .. } => FrameType::Heartbeat,
            Body::Fault { .. } => FrameType::Fault,
        }
    }
}

/// A decoded frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    /// The sender's sequence number (+1 per frame, wrapping).
    pub seq: u16,
    pub body: Body,
}

/// Why bytes up to a delimiter were not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("more than {DECODE_BUF} bytes without a 0x00 delimiter")]
    Oversized,
    #[error("invalid COBS encoding")]
    Cobs,
    #[error("frame of {0} bytes is shorter than the {OVERHEAD}-byte header and CRC")]
    Short(usize),
    #[error("CRC mismatch: frame says 0x{got:04x}, bytes give 0x{computed:04x}")]
    Crc { got: u16, computed: u16 },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame type {kind:?} needs a {want}-byte payload, got {got}")]
    Length {
        kind: FrameType,
        want: usize,
        got: usize,
    },
}

fn put<const N: usize>(out: &mut [u8], at: &mut usize, bytes: [u8; N]) {
    out[*at..*at + N].copy_from_slice(&bytes);
    *at += N;
}

/// The raw frame (before COBS) into `out`; returns its length.
pub fn encode_raw(frame: &Frame, out: &mut [u8; MAX_FRAME]) -> usize {
    let mut at = 0;
    put(out, &mut at, [frame.body.frame_type() as u8]);
    put(out, &mut at, frame.seq.to_le_bytes());
    match frame.body {
        Body::Hello(h) => {
            put(out, &mut at, h.version.to_le_bytes());
            put(out, &mut at, h.rig_id.to_le_bytes());
            put(out, &mut at, h.sample_rate_hz.to_le_bytes());
            put(out, &mut at, [h.v_unit, h.i_unit]);
            put(out, &mut at, h.v_scale.to_le_bytes());
            put(out, &mut at, h.i_scale.to_le_bytes());
        }
        Body::Sample(s) => {
            put(out, &mut at, s.t_us.to_le_bytes());
            put(out, &mut at, s.v.to_le_bytes());
            put(out, &mut at, s.i_applied.to_le_bytes());
            put(out, &mut at, s.echo_us.to_le_bytes());
            put(out, &mut at, s.cmd_seq.to_le_bytes());
        }
        Body::Command(c) => {
            put(out, &mut at, c.answers.to_le_bytes());
            put(out, &mut at, c.amplitude.to_le_bytes());
            put(out, &mut at, c.valid_for_us.to_le_bytes());
            put(out, &mut at, c.daemon_us.to_le_bytes());
        }
        Body::Heartbeat { t_us } => put(out, &mut at, t_us.to_le_bytes()),
        Body::Fault { code, detail } => {
            put(out, &mut at, code.to_le_bytes());
            put(out, &mut at, detail.to_le_bytes());
        }
    }
    let crc = CRC16.checksum(&out[..at]);
    put(out, &mut at, crc.to_le_bytes());
    at
}

/// The frame as sent on the wire (COBS-encoded, 0x00-terminated) into
/// `out`; returns its length. Never allocates.
pub fn encode(frame: &Frame, out: &mut [u8; MAX_WIRE]) -> usize {
    let mut raw = [0u8; MAX_FRAME];
    let n = encode_raw(frame, &mut raw);
    let m = cobs::encode(&raw[..n], &mut out[..MAX_WIRE - 1]);
    out[m] = 0;
    m + 1
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take())
    }
}

/// Parse a raw (COBS-decoded) frame.
pub fn decode_raw(raw: &[u8]) -> Result<Frame, FrameError> {
    if raw.len() < OVERHEAD {
        return Err(FrameError::Short(raw.len()));
    }
    let (body, crc_bytes) = raw.split_at(raw.len() - 2);
    let got = u16::from_le_bytes([crc_bytes[0], crc_bytes[1]]);
    let computed = CRC16.checksum(body);
    if got != computed {
        return Err(FrameError::Crc { got, computed });
    }
    let kind = FrameType::from_u8(body[0]).ok_or(FrameError::UnknownType(body[0]))?;
    let payload = body.len() - 3;
    if payload != kind.payload_len() {
        return Err(FrameError::Length {
            kind,
            want: kind.payload_len(),
            got: payload,
        });
    }
    let mut r = Reader { b: body, at: 1 };
    let seq = r.u16();
    let body = match kind {
        FrameType::Hello => Body::Hello(Hello {
            version: r.u16(),
            rig_id: r.u32(),
            sample_rate_hz: r.u32(),
            v_unit: r.u8(),
            i_unit: r.u8(),
            v_scale: r.f32(),
            i_scale: r.f32(),
        }),
        FrameType::Sample => Body::Sample(SampleFrame {
            t_us: r.u64(),
            v: r.i32(),
            i_applied: r.i32(),
            echo_us: r.u64(),
            cmd_seq: r.u16(),
        }),
        FrameType::Command => Body::Command(CommandFrame {
            answers: r.u16(),
            amplitude: r.i32(),
            valid_for_us: r.u32(),
            daemon_us: r.u64(),
        }),
        FrameType::Heartbeat => Body::Heartbeat { t_us: r.u64() },
        FrameType::Fault => Body::Fault {
            code: r.u16(),
            detail: r.u32(),
        },
    };
    Ok(Frame { seq, body })
}

/// Counts of what a decoder has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeStats {
    pub frames: u64,
    pub oversized: u64,
    pub bad_cobs: u64,
    pub short: u64,
    pub bad_crc: u64,
    pub unknown_type: u64,
    pub bad_length: u64,
    /// Empty frames (two delimiters in a row) are idle fill, not errors.
    pub idle: u64,
}

impl DecodeStats {
    /// Frames rejected for any reason.
    pub fn errors(&self) -> u64 {
        self.oversized
            + self.bad_cobs
            + self.short
            + self.bad_crc
            + self.unknown_type
            + self.bad_length
    }

    fn count(&mut self, r: &Result<Frame, FrameError>) {
        match r {
            Ok(_) => self.frames += 1,
            Err(FrameError::Oversized) => self.oversized += 1,
            Err(FrameError::Cobs) => self.bad_cobs += 1,
            Err(FrameError::Short(_)) => self.short += 1,
            Err(FrameError::Crc { .. }) => self.bad_crc += 1,
            Err(FrameError::UnknownType(_)) => self.unknown_type += 1,
            Err(FrameError::Length { .. }) => self.bad_length += 1,
        }
    }
}

/// A streaming decoder: feed bytes as they arrive, get a frame (or the
/// reason there is none) at each delimiter. A fixed buffer: never
/// allocates, whatever the input.
#[derive(Clone, Debug)]
pub struct Decoder {
    buf: [u8; DECODE_BUF],
    len: usize,
    overflow: bool,
    pub stats: DecodeStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            buf: [0; DECODE_BUF],
            len: 0,
            overflow: false,
            stats: DecodeStats::default(),
        }
    }

    /// Forget a partial frame (after a reconnect).
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    /// One byte. `None` until a delimiter ends something that is not idle
    /// fill.
    #[inline]
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        if byte != 0 {
            if self.len < DECODE_BUF {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow = true;
            }
            return None;
        }
        let (len, overflow) = (self.len, self.overflow);
        self.reset();
        if overflow {
            let r = Err(FrameError::Oversized);
            self.stats.count(&r);
            return Some(r);
        }
        if len == 0 {
            self.stats.idle += 1;
            return None;
        }
        let mut raw = [0u8; DECODE_BUF];
        let r = match cobs::decode(&self.buf[..len], &mut raw) {
            Ok(report) => decode_raw(&raw[..report.frame_size()]),
            Err(_) => Err(FrameError::Cobs),
        };
        self.stats.count(&r);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u16) -> Frame {
        Frame {
            seq,
            body: Body::Sample(SampleFrame {
                t_us: 100,
                v: -65_000,
                i_applied: 0,
                echo_us: 0,
                cmd_seq: 0,
            }),
        }
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame {
                seq: 0,
                body: Body::Hello(Hello {
                    version: VERSION,
                    rig_id: 7,
                    sample_rate_hz: 10_000,
                    v_unit: 1,
                    i_unit: 1,
                    v_scale: 0.001,
                    i_scale: 0.001,
                }),
            },
            sample(1),
            Frame {
                seq: 65535,
                body: Body::Command(CommandFrame {
                    answers: 1,
                    amplitude: -1500,
                    valid_for_us: 2000,
                    daemon_us: u64::MAX,
                }),
            },
            Frame {
                seq: 3,
                body: Body::Heartbeat { t_us: 0 },
            },
            Frame {
                seq: 4,
                body: Body::Fault {
                    code: 2,
                    detail: 0xdead_beef,
                },
            },
        ]
    }

    fn decode_all(bytes: &[u8]) -> (Vec<Frame>, Decoder) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for &b in bytes {
            if let Some(Ok(f)) = d.push(b) {
                out.push(f);
            }
        }
        (out, d)
    }

    #[test]
    fn crc_is_the_documented_variant() {
        assert_eq!(CRC16.checksum(b"123456789"), 0x29B1);
    }

    #[test]
    fn every_frame_type_round_trips() {
        for f in all_frames() {
            let mut wire = [0u8; MAX_WIRE];
            let n = encode(&f, &mut wire);
            assert_eq!(wire[n - 1], 0);
            assert!(wire[..n - 1].iter().all(|&b| b != 0), "COBS leaves no zero");
            let (got, d) = decode_all(&wire[..n]);
            assert_eq!(got, vec![f]);
            assert_eq!(d.stats.frames, 1);
        }
    }

    #[test]
    fn a_flipped_bit_is_a_crc_error_and_the_next_frame_still_decodes() {
        let mut wire = [0u8; MAX_WIRE];
        let n = encode(&sample(5), &mut wire);
        let mut stream = wire[..n].to_vec();
        stream[4] ^= 0x10;
        stream.extend_from_slice(&wire[..n]);
        let mut d = Decoder::new();
        let results: Vec<_> = stream.iter().filter_map(|&b| d.push(b)).collect();
        assert_eq!(results.len(), 2);
        assert!(matches!(
            results[0],
            Err(FrameError::Crc { .. }) | Err(FrameError::Cobs)
        ));
        assert_eq!(results[1], Ok(sample(5)));
        assert_eq!(d.stats.errors(), 1);
    }

    #[test]
    fn garbage_without_delimiters_is_one_oversized_frame() {
        let mut d = Decoder::new();
        for k in 0..100_000u32 {
            assert!(d.push((k % 255 + 1) as u8).is_none());
        }
        assert_eq!(d.push(0), Some(Err(FrameError::Oversized)));
        let mut wire = [0u8; MAX_WIRE];
        let n = encode(&sample(9), &mut wire);
        let got: Vec<_> = wire[..n].iter().filter_map(|&b| d.push(b)).collect();
        assert_eq!(got, vec![Ok(sample(9))]);
    }

    #[test]
    fn wrong_lengths_and_types_are_named() {
        let mut raw = [0u8; MAX_FRAME];
        let n = encode_raw(&sample(1), &mut raw);
        // Unknown type with a valid CRC.
        let mut bad = raw[..n].to_vec();
        bad[0] = 9;
        let crc = CRC16.checksum(&bad[..n - 2]).to_le_bytes();
        bad[n - 2..].copy_from_slice(&crc);
        assert_eq!(decode_raw(&bad), Err(FrameError::UnknownType(9)));
        // A Heartbeat type byte on a Sample-sized payload.
        bad[0] = FrameType::Heartbeat as u8;
        let crc = CRC16.checksum(&bad[..n - 2]).to_le_bytes();
        bad[n - 2..].copy_from_slice(&crc);
        assert_eq!(
            decode_raw(&bad),
            Err(FrameError::Length {
                kind: FrameType::Heartbeat,
                want: 8,
                got: 26
            })
        );
        assert_eq!(decode_raw(&[1, 2]), Err(FrameError::Short(2)));
    }

    /// The byte-level examples in docs/protocol.md are what this encoder
    /// writes, and decode back.
    #[test]
    fn the_documented_examples_are_exact() {
        let doc = include_str!("../docs/protocol.md");
        let hexes: Vec<(String, String)> = doc
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                (k == "raw" || k == "wire").then(|| (k.to_string(), v.trim().to_string()))
            })
            .collect();
        let frames = [
            Frame {
                seq: 0,
                body: Body::Hello(Hello {
                    version: 1,
                    rig_id: 7,
                    sample_rate_hz: 10_000,
                    v_unit: 1,
                    i_unit: 1,
                    v_scale: 0.001,
                    i_scale: 0.001,
                }),
            },
            sample(1),
            Frame {
                seq: 1,
                body: Body::Command(CommandFrame {
                    answers: 1,
                    amplitude: -1500,
                    valid_for_us: 2000,
                    daemon_us: 1_234_567,
                }),
            },
            Frame {
                seq: 2,
                body: Body::Heartbeat { t_us: 1_000_000 },
            },
            Frame {
                seq: 3,
                body: Body::Fault {
                    code: 2,
                    detail: 42,
                },
            },
        ];
        assert_eq!(hexes.len(), 2 * frames.len(), "{hexes:?}");
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (f, pair) in frames.iter().zip(hexes.chunks(2)) {
            let mut raw = [0u8; MAX_FRAME];
            let n = encode_raw(f, &mut raw);
            assert_eq!(pair[0], ("raw".to_string(), hex(&raw[..n])), "{f:?}");
            let mut wire = [0u8; MAX_WIRE];
            let m = encode(f, &mut wire);
            assert_eq!(pair[1], ("wire".to_string(), hex(&wire[..m])), "{f:?}");
            assert_eq!(decode_all(&wire[..m]).0, vec![*f]);
        }
    }

    #[test]
    fn idle_delimiters_are_not_errors() {
        let (_, d) = decode_all(&[0, 0, 0]);
        assert_eq!((d.stats.idle, d.stats.errors()), (3, 0));
    }
}
