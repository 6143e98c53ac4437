"""The reverse proxy: path checks (:mod:`.paths`), hop headers (:mod:`.headers`), the keep-alive
pool to the backend (:mod:`.upstream`), its long-lived owner (:mod:`.backend`), the optional
per-user limit (:mod:`.user_limit`) and the per-request handler (:mod:`.handler`).
"""
