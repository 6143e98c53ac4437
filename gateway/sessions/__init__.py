"""Sessions across instances: the refresh-token family ledger in PostgreSQL (:mod:`.ledger`),
the revoked-family broadcast over Redis (:mod:`.revocation`), per-user epochs (:mod:`.epochs`)
and the background pruner of ended families (:mod:`.pruner`).
"""
