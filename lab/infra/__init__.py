"""Small shared pieces: the private Redis broker, child processes the lab owns, the event-loop runner."""
