"""The reconciler: Firestore is the source of truth; jobs with no message in flight get one."""
