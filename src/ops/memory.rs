//! Process memory housekeeping.

/// Asks the kernel to reclaim the program's own read-only file pages
/// (code and constants) once start-up is done, so that what start-up alone
/// touched (configuration parsing, the WASM linker and component loading:
/// ~3 MB of the binary with a filter loaded) does not stay resident for
/// the life of the sidecar. Pages the running pipeline uses fault back in
/// from the page cache (minor faults, once). `MADV_PAGEOUT` (Linux 5.4):
/// pages also mapped by another process are left alone; older kernels
/// reject the advice, which is ignored. Returns the bytes advised.
pub fn release_startup_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut advised = 0;
        for line in maps.lines() {
            // start-end perms offset dev inode path
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let path = f.nth(3);
            if path != exe.to_str() || perms.starts_with("rw") || !perms.starts_with('r') {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            // SAFETY: advice only, on a read-only file mapping of this
            // process (page-aligned, from /proc/self/maps); the contents
            // stay valid and are read back on access.
            let r = unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_PAGEOUT) };
            if r == 0 {
                advised += b - a;
            }
        }
        advised
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(test)]
mod tests {
    /// The test binary's code is advised (and keeps running: the next
    /// calls fault it back in).
    #[test]
    #[cfg(target_os = "linux")]
    fn startup_pages_are_advised_and_code_still_runs() {
        let n = super::release_startup_pages();
        assert!(n > 0, "no read-only mapping of the executable advised");
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert!(super::release_startup_pages() > 0);
    }
}
