"""Producers: how work reaches the queue during a trial (a backlog, or open-loop arrivals)."""
