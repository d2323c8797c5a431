//! Record buffers.

/// Makes the empty buffer `v` hold at least `n` bytes: a new allocation
/// when it is too small (`reserve` would `realloc`, copying the old
/// allocation's bytes for nothing), rounded up to 4 KiB so that pooled
/// buffers fit the next events of about the same size.
pub fn fresh_capacity(v: &mut Vec<u8>, n: usize) {
    debug_assert!(v.is_empty());
    if v.capacity() < n {
        *v = Vec::with_capacity(n.next_multiple_of(4096));
    }
}
