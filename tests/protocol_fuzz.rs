//! The wire decoder against arbitrary input (a bounded fuzz run in CI;
//! `FUZZ_CASES=200000 cargo test --release --test protocol_fuzz` runs a
//! long one): it never panics, never holds more than its fixed buffer, and
//! every valid frame that follows a delimiter decodes, whatever noise
//! surrounds it.

use neurostimd::protocol::{
    encode, Body, CommandFrame, Decoder, Frame, Hello, SampleFrame, MAX_WIRE,
};
use proptest::prelude::*;

fn any_frame() -> impl Strategy<Value = Frame> {
    let body = prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<u8>(),
            -1e6f32..1e6,
            -1e6f32..1e6
        )
            .prop_map(
                |(version, rig_id, sample_rate_hz, v_unit, i_unit, v_scale, i_scale)| {
                    Body::Hello(Hello {
                        version,
                        rig_id,
                        sample_rate_hz,
                        v_unit,
                        i_unit,
                        v_scale,
                        i_scale,
                    })
                }
            ),
        (
            any::<u64>(),
            any::<i32>(),
            any::<i32>(),
            any::<u64>(),
            any::<u16>()
        )
            .prop_map(
                |(t_us, v, i_applied, echo_us, cmd_seq)| Body::Sample(SampleFrame {
                    t_us,
                    v,
                    i_applied,
                    echo_us,
                    cmd_seq
                })
            ),
        (any::<u16>(), any::<i32>(), any::<u32>(), any::<u64>()).prop_map(
            |(answers, amplitude, valid_for_us, daemon_us)| Body::Command(CommandFrame {
                answers,
                amplitude,
                valid_for_us,
                daemon_us
            })
        ),
        any::<u64>().prop_map(|t_us| Body::Heartbeat { t_us }),
        (any::<u16>(), any::<u32>()).prop_map(|(code, detail)| Body::Fault { code, detail }),
    ];
    (any::<u16>(), body).prop_map(|(seq, body)| Frame { seq, body })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut d = Decoder::new();
        let mut results = 0u64;
        for b in bytes {
            if d.push(b).is_some() {
                results += 1;
            }
        }
        prop_assert_eq!(results, d.stats.frames + d.stats.errors());
        prop_assert!(std::mem::size_of::<Decoder>() < 256);
    }

    #[test]
    fn valid_frames_in_noise_all_decode(
        items in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..200), any_frame()), 1..20),
        tail in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut stream = Vec::new();
        for (noise, f) in &items {
            stream.extend_from_slice(noise);
            stream.push(0);
            let mut wire = [0u8; MAX_WIRE];
            let n = encode(f, &mut wire);
            stream.extend_from_slice(&wire[..n]);
        }
        stream.extend_from_slice(&tail);
        let mut d = Decoder::new();
        let decoded: Vec<Frame> = stream.iter().filter_map(|&b| d.push(b)).filter_map(Result::ok).collect();
        // Every frame, in order (noise may, very rarely, also pass a CRC).
        let mut it = decoded.iter();
        for (_, f) in &items {
            prop_assert!(it.any(|g| g == f), "{:?} not decoded from {:?}", f, decoded);
        }
    }
}
