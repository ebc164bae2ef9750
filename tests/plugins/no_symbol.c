/* A shared object that is not an llmux plugin: no entry point. */
int not_the_entry_point(void);
int not_the_entry_point(void) { return 42; }
