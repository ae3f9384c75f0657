"""Pure compute: functions of local files and numbers. No Prefect, no HTTP, no database."""
