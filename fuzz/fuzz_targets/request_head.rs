//! The server's watch for the end of a request head (`limits::head_progress`), which lifts the
//! slowloris deadline: fed in pieces of any size, it must see `\r\n\r\n` exactly when the
//! bytes contain it. The first input byte sets the size of the pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc::fuzzing::head_progress;

fuzz_target!(|data: &[u8]| {
    let Some((&size, bytes)) = data.split_first() else {
        return;
    };
    let size = usize::from(size).max(1);
    let whole = head_progress(0, bytes);
    let pieces = bytes.chunks(size).fold(0, head_progress);
    assert_eq!(whole, pieces, "pieces of {size}");
    let complete = bytes.windows(4).any(|w| w == b"\r\n\r\n");
    assert_eq!(whole == 4, complete, "{bytes:?}");
    assert!(whole <= 4);
});
