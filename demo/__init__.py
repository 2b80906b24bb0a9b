"""``make demo``: one real supervisor on 127.0.0.1 deploys and runs the fibonacci module."""
