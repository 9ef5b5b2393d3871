"""Auditing instruction data with a moderation judge (VLGuard §3: LLaVA's data holds harmful samples): every
exchange judged on the mesh or by a network judge, resumably; the flagged list, a clean copy and a report."""

from vlguard_jax.audit.run import AuditConfig, flagged_ids, run_audit

__all__ = ["AuditConfig", "flagged_ids", "run_audit"]
