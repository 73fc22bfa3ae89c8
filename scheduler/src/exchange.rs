//! Profile exchange between the ranks of a multi-process serving job.
//!
//! Each rank profiles only its own device, yet every rank must allocate
//! the batch over all devices, and they must all get the same allocation
//! without a coordinator. So the ranks all-gather their profiles: every
//! rank then holds the same list, in rank order, and the (deterministic)
//! policies give every rank the same answer.
//!
//! This file owns the protocol: what one rank sends ([`encode_profile`])
//! and how the gathered bytes become the list ([`decode_profiles`]).
//! Moving the bytes is the caller's: [`exchange_profiles`] takes any
//! all-gather of byte strings (over a collective, a transport helper), so
//! the protocol depends on no one transport.
//!
//! Every rank decodes every profile, its own included, from the same
//! bytes with the same code, so all ranks hold identical lists even where
//! parsing a float rounds it.
//!
//! Wire form: a rank's [`DeviceProfile`] as JSON. Trailing ASCII
//! whitespace and zero bytes are ignored (no JSON text ends in them), so
//! an all-gather of fixed-width records may pad either way.

use hetero_core::{Error, Result};

use crate::policy::DeviceProfile;

/// What one rank sends: its profile as JSON.
pub fn encode_profile(mine: &DeviceProfile) -> Result<Vec<u8>> {
    serde_json::to_vec(mine).map_err(|e| Error::invalid("device profile", e.to_string()))
}

/// Every rank's profile from what each sent, `sent[r]` from rank `r`. The
/// names gain a `rank r: ` prefix, since two ranks often have devices of
/// the same name (and the same id: each process numbers its devices from
/// 0); a rank whose bytes do not decode is named in the error.
pub fn decode_profiles<B: AsRef<[u8]>>(sent: &[B]) -> Result<Vec<DeviceProfile>> {
    sent.iter()
        .enumerate()
        .map(|(r, bytes)| {
            let bytes = bytes.as_ref();
            let end = bytes
                .iter()
                .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            let mut p: DeviceProfile = serde_json::from_slice(&bytes[..end]).map_err(|e| {
                Error::invalid(
                    "device profile",
                    format!("rank {r} sent an unreadable profile: {e}"),
                )
            })?;
            p.name = format!("rank {r}: {}", p.name);
            Ok(p)
        })
        .collect()
}

/// Send `mine` to every rank and get every rank's profile back, in rank
/// order. `all_gather` moves the bytes: given this rank's bytes, it
/// returns every rank's (its own included), indexed by rank.
pub async fn exchange_profiles<F>(mine: &DeviceProfile, all_gather: F) -> Result<Vec<DeviceProfile>>
where
    F: AsyncFnOnce(Vec<u8>) -> Result<Vec<Vec<u8>>>,
{
    let gathered = all_gather(encode_profile(mine)?).await?;
    decode_profiles(&gathered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::StepModel;
    use hetero_core::{Backend, DeviceId};

    fn profile(i: u32, name: &str) -> DeviceProfile {
        DeviceProfile {
            device: DeviceId::new(Backend::Host, i),
            name: name.into(),
            max_batch: 12 + i as usize,
            step: StepModel {
                fixed_s: 1e-3,
                per_sequence_s: 2.5e-4 * f64::from(i + 1),
            },
        }
    }

    #[test]
    fn profiles_round_trip_in_rank_order_with_rank_names() {
        let sent: Vec<Vec<u8>> = [profile(0, "cpu"), profile(0, "cpu"), profile(1, "gpu")]
            .iter()
            .map(|p| encode_profile(p).unwrap())
            .collect();
        let got = decode_profiles(&sent).unwrap();
        assert_eq!(got.len(), 3);
        for (r, (p, want)) in got
            .iter()
            .zip([profile(0, "cpu"), profile(0, "cpu"), profile(1, "gpu")])
            .enumerate()
        {
            assert_eq!(p.name, format!("rank {r}: {}", want.name));
            assert_eq!(p.device, want.device);
            assert_eq!(p.max_batch, want.max_batch);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * b.abs();
            assert!(close(p.step.fixed_s, want.step.fixed_s), "{p:?}");
            assert!(close(p.step.per_sequence_s, want.step.per_sequence_s));
        }
    }

    #[test]
    fn padding_is_ignored_and_garbage_names_its_rank() {
        let mut spaces = encode_profile(&profile(0, "a")).unwrap();
        spaces.resize(spaces.len() + 9, b' ');
        let mut zeros = encode_profile(&profile(1, "b")).unwrap();
        zeros.resize(zeros.len() + 9, 0);
        let got = decode_profiles(&[spaces.clone(), zeros]).unwrap();
        assert_eq!(got[1].name, "rank 1: b");

        let err = decode_profiles(&[spaces, b"{not json".to_vec()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank 1 sent an unreadable profile"), "{err}");
        let err = decode_profiles(&[Vec::new()]).unwrap_err().to_string();
        assert!(err.contains("rank 0"), "{err}");
        assert!(decode_profiles::<Vec<u8>>(&[]).unwrap().is_empty());
    }

    #[test]
    fn exchange_hands_the_encoding_to_the_all_gather() {
        let mine = profile(3, "mine");
        let other = encode_profile(&profile(4, "other")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt
            .block_on(exchange_profiles(&mine, async |bytes: Vec<u8>| {
                assert_eq!(bytes, encode_profile(&mine)?);
                Ok(vec![other.clone(), bytes])
            }))
            .unwrap();
        assert_eq!(got[0].name, "rank 0: other");
        assert_eq!(got[1].name, "rank 1: mine");
        let failed = rt.block_on(exchange_profiles(&mine, async |_| {
            Err(Error::PeerFailure {
                rank: 1,
                reason: "gone".into(),
            })
        }));
        assert!(matches!(failed, Err(Error::PeerFailure { rank: 1, .. })));
    }
}
