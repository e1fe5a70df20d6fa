"""Publishing stage: materialize recommendations into `reco`, its tables, rows and database roles."""
