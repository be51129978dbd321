//! Memory under steady load. The metrics recorder keeps every histogram
//! sample until its upkeep folds the samples into buckets; the upkeep runs
//! on a timer, so the heap stays flat whether or not anything scrapes
//! `/metrics`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;

use crate::support::{http_client, spawn_app};

/// The bytes live on this process's heap, the server's included (it runs
/// in the test's process). A handful of lines over the system allocator:
/// one counter is all the test needs.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; the
// counter is only arithmetic on the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Longer than the recorder's upkeep period (5 s).
const PAST_AN_UPKEEP: Duration = Duration::from_secs(6);
const REQUESTS: usize = 25_000;
const SETTLING: usize = 1_024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heap_stays_flat_under_steady_load_while_nothing_scrapes() {
    let app = spawn_app().await;
    // Thirty-two clients sending one request at a time: thirty-two
    // connections throughout, so their buffers weigh the same at both
    // measurements. They keep them idle across the pauses below (and
    // within the shop's 15 s), so that no measurement counts connections
    // closed and opened again.
    let keep = PAST_AN_UPKEEP + Duration::from_secs(4);
    let clients: Vec<reqwest::Client> =
        (0..32).map(|_| http_client().pool_idle_timeout(keep).build().unwrap()).collect();
    let url = app.url("/health/live");
    let load = async |requests: usize| {
        join_all(clients.iter().map(|client| async {
            for _ in 0..requests / clients.len() {
                assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::OK);
            }
        }))
        .await
    };
    // The heap once an upkeep has run: the least over a second, so that
    // what a background task holds for a moment does not count. The
    // recorder frees drained samples lazily (epoch-based reclamation, as
    // later samples are recorded), so a few requests first let them go.
    let settled = async || {
        tokio::time::sleep(PAST_AN_UPKEEP).await;
        load(SETTLING).await;
        let mut least = isize::MAX;
        for _ in 0..100 {
            least = least.min(LIVE.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        least
    };
    // Connections, buffers, every series, and whatever grows to a bound
    // under this load, have grown to it after the same load once.
    load(REQUESTS).await;
    let before = settled().await;
    load(REQUESTS).await;
    let grown = settled().await - before;
    // Kept samples are 8 bytes a request at least (15 measured here with
    // the upkeep turned off); with it, the heap moves by tens of kilobytes.
    assert!(grown < (REQUESTS * 5) as isize, "the heap grew {grown} bytes over {REQUESTS} requests");
}
