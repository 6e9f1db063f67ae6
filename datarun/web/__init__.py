"""The read-only web view (`datarun web`): see datarun.web.app."""
