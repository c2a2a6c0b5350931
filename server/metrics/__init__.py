"""Metrics: counters kept by every worker in shared memory, summed by the master.

Each worker records into a page of shared memory the master created for it before the fork
(``porch.metrics.counters``): requests by mount, method and status class, a latency histogram
by mount, body bytes, connections, CGI scripts, WSGI exceptions and XML-RPC faults.  The master
reads every page each tick, adds the counts of workers that have exited (so a worker that dies
or is recycled loses nothing it had counted), keeps a few minutes of history, and publishes the
result as one JSON document in a shared board every worker can read (``porch.metrics.board``).
The ``status``, ``metrics``, ``health`` and ``ready`` handlers and ``porch top`` show that document.

The snapshot (every number since the master started unless it says otherwise)::

    software, version, python, build ("pure" | "compiled"), concurrency, master_pid, started (unix time),
    time (unix time of this snapshot), uptime_seconds, generation, state
    ("starting" | "ready" | "reloading" | "stopping"), workers_target,
    requests:        [{mount, method, code ("2xx"), count}]
    bounds:          [0.001, ..., 10.0]  the latency buckets' upper bounds in seconds
    durations:       [{mount, cumulative: [count <= each bound..., count of all], sum, count}]
    bytes:           [{mount, received, sent}]          request and response body bytes
    connections:     {accepted, open, idle, active}
    in_flight:       requests being served now
    cgi:             {running, started, timed_out, killed}
    wsgi_exceptions: [{mount, count}]
    xmlrpc_faults:   [{mount, code, count}]
    worker_events:   {started, respawned, exited: {reason: count}}
    reloads:         {succeeded, refused}
    limits:          {rate_limited (requests answered 429), connections_refused (closed at once:
                       limits.connections_per_client)}
    workers:         [{pid, generation, state ("booting" | "serving" | "retiring"), started (unix
                       time), requests, rss_bytes, threads, children, connections: {open, idle,
                       active}, busy: [{thread, method, path, client, age_seconds, request_id}]}]
    mounts:          [{mount, type, requests, errors (5xx), sent, p50, p95, p99}]  (quantiles of
                       the last minute, seconds, null when it had no request)
    history:         {interval_seconds, time: [...], requests_per_second: [...], p50, p95, p99:
                       [... null when no request], codes: {"1xx": [...], ..., "5xx": [...]}
                       (requests a second), connections: [...], in_flight: [...]}

Paths in ``busy`` carry no query string, and nothing of a request's headers is kept.
"""
