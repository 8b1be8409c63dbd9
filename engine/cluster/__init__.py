"""Scale-out on Ray: one front (API, queue, history) and Ray actor workers, one per GPU or CPU slot.

Only ``pool`` and ``front`` import Ray, and only when ``main.py --cluster`` builds them; ``needs`` and
``dispatch`` are pure and ``actor`` holds the worker's side (its own executor, models and cache).
"""
