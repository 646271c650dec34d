"""The user service: accounts, logins, sessions, profiles and password resets."""
