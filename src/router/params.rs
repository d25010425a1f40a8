//! Values of `$n` placeholders: Bind parameters (text or binary) in the extended protocol, extracted
//! literals in the simple protocol. The router asks for integers only.

/// Something that can say what integer `$n` (1-based) holds.
pub trait ParamSource {
    /// The integer value of `$n`; `None` when it is NULL, missing, or not an integer.
    fn int(&self, n: usize) -> Option<i64>;
    /// The elements of an integer array `$n`; `None` when it is NULL, missing, not an array of
    /// integers, or contains a NULL.
    fn int_array(&self, n: usize) -> Option<Vec<i64>>;
}

/// No parameters at all.
pub struct NoParams;

impl ParamSource for NoParams {
    fn int(&self, _n: usize) -> Option<i64> {
        None
    }
    fn int_array(&self, _n: usize) -> Option<Vec<i64>> {
        None
    }
}
