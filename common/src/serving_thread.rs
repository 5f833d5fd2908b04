//! Which threads serve HTTP on runtimes of their own (`MALL_HTTP_THREADS` > 0): the server
//! marks them, and what a handler opens there stays there (see `redis`).

thread_local! {
    static SERVING_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as a serving thread, for its lifetime.
pub(crate) fn mark() {
    SERVING_THREAD.set(true);
}

/// Whether this thread is one of the serving threads.
pub(crate) fn current() -> bool {
    SERVING_THREAD.get()
}
