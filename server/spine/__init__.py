"""The request spine: validate -> dispatch -> handle -> log, the same under every concurrency model."""
