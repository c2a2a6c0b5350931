"""Where requests run: the threading and forking models, the pool's turns, and one worker's composition root."""
