//! The source-API client: filter styles, paginators as lazy streams, retry policy, auth.
