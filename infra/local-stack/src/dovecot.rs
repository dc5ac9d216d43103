//! A throwaway Dovecot instance: generated config, CA and server cert, IMAPS on a free port,
//! oauth2 passdb pointed at the identity stand-in's introspection endpoint.
