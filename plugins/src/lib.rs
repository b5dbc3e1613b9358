//! Built-in policy plugins (retention, transform, layout) arrive with the plugin issue.
//! The package exists so the workspace has its final shape; it holds no code yet.
