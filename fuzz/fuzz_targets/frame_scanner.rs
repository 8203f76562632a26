//! Fuzzes the frame scanner: any bytes, cut into chunks of any sizes, must come out of a
//! pass-through tracker unchanged (plus a withheld incomplete trailing header), and the tracker
//! must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_actors::frame::{FrameTracker, PassThrough};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed % 17) + 1;
    let mut tracker = FrameTracker::default();
    let mut out = Vec::with_capacity(bytes.len());
    let mut inspector = PassThrough;
    for chunk in bytes.chunks(step) {
        tracker
            .process(chunk, &mut inspector, &mut out)
            .expect("pass-through never rejects");
    }
    // A trailing incomplete header is withheld until the stream ends.
    out.extend_from_slice(tracker.withheld());
    assert_eq!(out, bytes);
});
