"""Why a gs:// save died on this host: every cause checked against the job environment."""
