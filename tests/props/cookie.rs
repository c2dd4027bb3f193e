//! Cookie verification (`affinity::cookie`): values signed with random
//! secrets, ids and issue times are accepted as exactly what was signed;
//! every single-byte change is refused (by the full check and by the
//! stamp fast path); arbitrary strings never panic. Verification must not
//! allocate: it runs on every request.

use proptest::prelude::*;
use tether::affinity::cookie::{CookieSigner, Verified, VALUE_LEN};
use tether::affinity::hash::hash_key;
use tether::store::SessionMeta;

use crate::{bound, peak};

fn signed() -> impl Strategy<Value = (Vec<u8>, String, u32)> {
    (
        prop::collection::vec(any::<u8>(), 0..80),
        "[A-Za-z0-9_-]{22}",
        any::<u32>(),
    )
}

/// `value` with the byte at `at` replaced by `by` (ASCII, or a longer
/// UTF-8 char that also shifts everything after it).
fn change(value: &str, at: usize, by: char) -> String {
    let mut s = String::with_capacity(value.len() + 4);
    s.push_str(&value[..at]);
    s.push(by);
    s.push_str(&value[at + 1..]);
    s
}

proptest! {
    #![proptest_config(crate::config(128))]

    #[test]
    fn accepts_exactly_what_was_signed((secret, id, issued) in signed()) {
        let s = CookieSigner::new(&secret);
        let v = s.sign(&id, issued);
        prop_assert_eq!(v.len(), VALUE_LEN);
        let want = Some(Verified { id: &id, issued });
        let meta = SessionMeta::default();
        let ((plain, first, again, id_of), used) = peak(|| {
            (s.verify(&v), s.verify_with(&v, Some(&meta)), s.verify_with(&v, Some(&meta)), CookieSigner::id_of(&v))
        });
        prop_assert_eq!(used, 0, "verification allocated");
        prop_assert_eq!(plain, want);
        prop_assert_eq!(first, want);
        prop_assert_eq!(again, want, "the stamp fast path");
        prop_assert_eq!(id_of, Some(id.as_str()));
        prop_assert_eq!(s.verify_with(&v, None), want);
    }

    #[test]
    fn refuses_any_single_byte_change(
        (secret, id, issued) in signed(),
        at in 0..VALUE_LEN,
        by in prop_oneof![4 => (0x20u8..0x7f).prop_map(char::from), 1 => any::<char>()],
    ) {
        let s = CookieSigner::new(&secret);
        let v = s.sign(&id, issued);
        prop_assume!(v.as_bytes()[at] != by as u8 || !by.is_ascii());
        let t = change(&v, at, by);
        // The genuine value was verified before: its stamp is in the session.
        let meta = SessionMeta::default();
        prop_assert!(s.verify_with(&v, Some(&meta)).is_some());
        let ((plain, fast, none), used) = peak(|| (s.verify(&t), s.verify_with(&t, Some(&meta)), s.verify_with(&t, None)));
        prop_assert_eq!(used, 0);
        prop_assert_eq!(plain, None, "tampered at {}", at);
        prop_assert_eq!(fast, None);
        prop_assert_eq!(none, None);
        // Nor does another secret's signer take the genuine value.
        let mut other = secret.clone();
        other.push(1);
        prop_assert_eq!(CookieSigner::new(&other).verify(&v), None);
    }

    #[test]
    fn arbitrary_values_never_panic(
        value in prop_oneof![
            ".{0,100}",
            "[A-Za-z0-9_-]{22}[0-9a-fA-F+-]{8}[A-Za-z0-9_=-]{43}",
            "[A-Za-z0-9_\u{e9}-]{20,24}[0-9a-f\u{1F600}]{6,9}[A-Za-z0-9_-]{40,45}",
        ],
        stamp_matches in prop::bool::ANY,
    ) {
        let s = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        // A session whose stamp happens to match the value: the fast path
        // then reads the value without the HMAC and must still not panic.
        let meta = SessionMeta::default();
        if stamp_matches {
            meta.set_stamp(hash_key(value.as_bytes()) | 1);
        }
        let ((plain, fast), used) = peak(|| {
            let _ = CookieSigner::id_of(&value);
            (s.verify(&value), s.verify_with(&value, Some(&meta)))
        });
        prop_assert!(used <= bound(value.len()));
        prop_assert_eq!(used, 0);
        prop_assert_eq!(plain, None, "an unsigned value verified");
        if !stamp_matches {
            prop_assert_eq!(fast, None);
        }
    }
}
