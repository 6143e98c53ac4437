"""The gateway's side of the audit trail: recording events (:mod:`gateway.audit.record`), its
writer (:mod:`gateway.audit.writer`), and answering ``GET /api/v1/admin/audit`` and
``GET /api/v1/auth/events`` (:mod:`gateway.audit.routes`)."""
