"""Stop fairseq's prefetching thread before Python exits, so a run that ends mid-epoch exits 0.

fairseq's ``BufferedIterator`` (``--data-buffer-size``, 10 by default) fills its queue from a
daemon ``BackgroundConsumer`` thread. When training stops mid-epoch (``--max-update``), that
thread is still collating the next batch inside torch's C++ code. At interpreter finalization a
daemon thread that takes the GIL back is ended with ``pthread_exit``, whose unwinding through
torch's C++ frames aborts the process: ``terminate called without an active exception``, exit
134, after fairseq printed "done training" and saved everything. Stock fairseq 0.12.3.1 with torch
2.13 on Python 3.11 does this in most mid-epoch stops (``tests/test_prefetch_exit.py``);
``--data-buffer-size 0`` avoids it by not prefetching.

``atexit`` callbacks run after the non-daemon threads have ended and before finalization starts,
so the callback registered here asks each live consumer to stop after the item it is making
(``_max_len``, the bound its loop already checks) and drains the queue until it has put its
sentinel and returned: at most one more batch of work.
"""
import atexit
import queue
import threading

JOIN_SECONDS = 60.0  # a consumer still running by then is left to the interpreter, as before


def _consumer_class():
    from fairseq.data.iterators import BackgroundConsumer

    return BackgroundConsumer


def stop_prefetching_threads(timeout: float = JOIN_SECONDS) -> int:
    """Stop every live ``BackgroundConsumer`` (draining its queue); returns how many were stopped."""
    consumers = [t for t in threading.enumerate() if isinstance(t, _consumer_class()) and t.is_alive()]
    for consumer in consumers:
        consumer._max_len = 0  # its loop breaks after the next put
    for consumer in consumers:
        _drain_until_done(consumer, timeout)
    return len(consumers)


def _drain_until_done(consumer, timeout: float) -> None:
    waited = 0.0
    while consumer.is_alive() and waited < timeout:
        try:
            while True:
                consumer._queue.get_nowait()
        except queue.Empty:
            pass
        consumer.join(0.05)
        waited += 0.05


atexit.register(stop_prefetching_threads)
