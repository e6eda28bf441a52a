//! What every error kind says beside its text: whose side it is on, and whether
//! the same request may be tried again.

/// Whose side an error is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request (or the configuration an operator wrote) is wrong: retrying it
    /// unchanged fails again.
    Client,
    /// The origin failed or could not be reached.
    Origin,
    /// Lacquer itself (a poisoned lock, a limit of its own).
    Internal,
}

/// The side of an error, and whether retrying the same request is safe (it was
/// certainly not applied, and may succeed later).
pub trait Kind {
    fn side(&self) -> Side;
    fn retry_safe(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReloadError;
    use crate::origin::OriginErrorKind;
    use crate::purge::Refused;

    #[test]
    fn each_kind_says_its_side_and_whether_a_retry_is_safe() {
        let cases: &[(&dyn Kind, Side, bool)] = &[
            (&OriginErrorKind::Unreachable, Side::Origin, true),
            (&OriginErrorKind::ConnectTimeout, Side::Origin, true),
            (&OriginErrorKind::FirstByteTimeout, Side::Origin, false),
            (&OriginErrorKind::Protocol, Side::Origin, false),
            (&OriginErrorKind::Unhealthy, Side::Origin, false),
            (&OriginErrorKind::Busy, Side::Internal, true),
            (&Refused::Invalid(String::new()), Side::Client, false),
            (&Refused::OutOfScope(String::new()), Side::Client, false),
            (&ReloadError::NoSource, Side::Internal, true),
        ];
        for (i, (kind, side, retry)) in cases.iter().enumerate() {
            assert_eq!(
                (kind.side(), kind.retry_safe()),
                (*side, *retry),
                "case {i}"
            );
        }
    }
}
