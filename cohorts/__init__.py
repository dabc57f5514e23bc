"""Cohorts: rings, the rules that place users in them, assignment, flagd compilation, the SQL store."""
