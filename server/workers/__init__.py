"""Where requests run: the acceptor, the threading and forking models, the pool's turns and their
tuning, and one worker's composition root."""
